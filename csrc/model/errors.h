// Engine errors; the bindings map them onto phi2cpu.errors classes.
#pragma once
#include <stdexcept>

namespace phi2cpu {

struct FileError : std::runtime_error { using std::runtime_error::runtime_error; };     // bad model file
struct ContextError : std::runtime_error { using std::runtime_error::runtime_error; };  // context full
struct SetupError : std::runtime_error { using std::runtime_error::runtime_error; };    // bad setting

}  // namespace phi2cpu
