// pybind11 registration only: argument conversion, GIL release, error translation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "quant/traits.h"

namespace py = pybind11;
using namespace phi2cpu;

namespace {

const TypeTraits& traits_or_throw(uint32_t type) {
    const TypeTraits* tt = type_traits(type);
    if (!tt) throw std::invalid_argument("unsupported tensor type id " + std::to_string(type));
    return *tt;
}

// f32 array of shape (..., n) -> uint8 array of shape (..., row_bytes(n)), the GGUF bytes.
py::array_t<uint8_t> quantize(py::array_t<float, py::array::c_style | py::array::forcecast> x, uint32_t type) {
    const TypeTraits& tt = traits_or_throw(type);
    if (x.ndim() < 1) throw std::invalid_argument("quantize: need at least one dimension");
    const int64_t n = x.shape(x.ndim() - 1);
    if (n % tt.block_size != 0)
        throw std::invalid_argument(std::string("quantize: row length ") + std::to_string(n) +
                                    " is not a multiple of the " + tt.name + " block size " +
                                    std::to_string(tt.block_size));
    const int64_t rows = n ? x.size() / n : 0;
    const size_t rb = row_bytes(tt, n);
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = py::ssize_t(rb);
    py::array_t<uint8_t> out(shape);
    const float* src = x.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows; r++) tt.quantize(src + r * n, dst + r * rb, n);
    }
    return out;
}

py::array_t<float> dequantize(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> q, uint32_t type, int64_t n) {
    const TypeTraits& tt = traits_or_throw(type);
    if (n <= 0 || n % tt.block_size != 0) throw std::invalid_argument("dequantize: bad row length");
    const size_t rb = row_bytes(tt, n);
    if (size_t(q.size()) % rb != 0) throw std::invalid_argument("dequantize: byte count is not a whole number of rows");
    const int64_t rows = int64_t(size_t(q.size()) / rb);
    py::array_t<float> out({py::ssize_t(rows), py::ssize_t(n)});
    const uint8_t* src = q.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows; r++) tt.dequantize(src + r * rb, dst + r * n, n);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "phi2cpu C++ engine";
    m.def("quantize", &quantize, py::arg("x"), py::arg("type"),
          "Quantize float32 rows (last axis) to GGUF block bytes of the given GGML type id.");
    m.def("dequantize", &dequantize, py::arg("data"), py::arg("type"), py::arg("n"),
          "Dequantize GGUF block bytes to float32 rows of length n.");
}
