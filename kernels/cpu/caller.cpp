// The call path of the bound forward products (kernels.cpu.BoundProduct) as one torch C++ function per format:
// check x, allocate y with torch::empty, call the compiled kernel (an entry point of the ctypes library, passed
// by address, with the weights' pointers and sizes bound in Python). With cold caches the Python version of
// this path (torch.empty through the argument parser, ctypes' argument conversion) cost 15-50 us per call.
// Guarded adds, for kernels.layers, the layer's own checks in front of that call.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <functional>
#include <utility>
#include <vector>

namespace {

using DiagFn = int (*)(const void*, const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t,
                       int, int);
using CondensedFn = int (*)(const void*, const void*, const void*, const void*, const void*, void*, int64_t, int64_t,
                            int64_t, int64_t, int64_t, int);

// dst_lanes_mm_f32 and dst_diag_pack_mm_f32: (x, blob, bias, y, B, in, out, n, steps, threads)
using LanesFn = int (*)(const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        int);

const void* pointer(int64_t address) { return reinterpret_cast<const void*>(address); }

// Whether the fast path takes x: (B > 0, in), contiguous, on the CPU, of the weights' dtype.
bool accepts(const torch::Tensor& x, at::ScalarType dtype, int64_t in) {
    return x.scalar_type() == dtype && x.dim() == 2 && x.size(1) == in && x.size(0) > 0 && x.device().is_cpu() &&
           x.is_contiguous();
}

}  // namespace

// y = x @ W.T (+ bias) for a diagonal weight; None when x needs the general path or the kernel reports an
// error (the general path then calls the kernel again and raises the error as the Python path does).
torch::Tensor diag_mm(const torch::Tensor& x, int64_t fn, at::ScalarType dtype, int64_t offsets, int64_t values,
                      int64_t bias, int64_t in, int64_t out, int64_t k, int64_t dst_long) {
    if (!accepts(x, dtype, in)) return {};
    torch::Tensor y = torch::empty({x.size(0), out}, x.options());
    const int status = reinterpret_cast<DiagFn>(fn)(x.data_ptr(), pointer(offsets), pointer(values), pointer(bias),
                                                    y.data_ptr(), x.size(0), in, out, k, int(dst_long),
                                                    at::get_num_threads());
    return status ? torch::Tensor() : y;
}

// y = x @ W.T (+ bias) for a constant fan-in weight; None as for diag_mm.
torch::Tensor condensed_mm(const torch::Tensor& x, int64_t fn, at::ScalarType dtype, int64_t values, int64_t indices,
                           int64_t rows, int64_t bias, int64_t in, int64_t out, int64_t n, int64_t k) {
    if (!accepts(x, dtype, in)) return {};
    torch::Tensor y = torch::empty({x.size(0), out}, x.options());
    const int status = reinterpret_cast<CondensedFn>(fn)(x.data_ptr(), pointer(values), pointer(indices),
                                                         pointer(rows), pointer(bias), y.data_ptr(), x.size(0), in,
                                                         out, n, k, at::get_num_threads());
    return status ? torch::Tensor() : y;
}

// y = x @ W.T (+ bias) through a packed copy of the weights (copy_fn, a LanesFn, with its blob, n and steps), for an x
// accepts() took; None when the kernel reports an error.
torch::Tensor copy_mm(const torch::Tensor& x, int64_t copy_fn, int64_t blob, int64_t bias, int64_t in, int64_t out,
                      int64_t n, int64_t steps) {
    torch::Tensor y = torch::empty({x.size(0), out}, x.options());
    const int status = reinterpret_cast<LanesFn>(copy_fn)(x.data_ptr(), pointer(blob), pointer(bias), y.data_ptr(),
                                                          x.size(0), in, out, n, steps, at::get_num_threads());
    return status ? torch::Tensor() : y;
}

// condensed_mm for a weight that also has a lane-packed copy (kernels/cpu/lanes.cpp): batches of at most `small`
// rows go through the copy (lanes_fn, with its blob, n_lanes active rows and steps), larger ones as condensed_mm.
torch::Tensor lanes_mm(const torch::Tensor& x, int64_t lanes_fn, int64_t blob, int64_t n_lanes, int64_t steps,
                       int64_t small, int64_t fn, at::ScalarType dtype, int64_t values, int64_t indices, int64_t rows,
                       int64_t bias, int64_t in, int64_t out, int64_t n, int64_t k) {
    if (!accepts(x, dtype, in)) return {};
    if (x.size(0) > small) return condensed_mm(x, fn, dtype, values, indices, rows, bias, in, out, n, k);
    return copy_mm(x, lanes_fn, blob, bias, in, out, n_lanes, steps);
}

// diag_mm for a weight that also has a tile-packed copy (kernels/cpu/diag_pack.cpp): batches of at most `small` rows
// go through the copy (pack_fn, with its blob and entries), larger ones as diag_mm.
torch::Tensor diag_pack_mm(const torch::Tensor& x, int64_t pack_fn, int64_t blob, int64_t k_pack, int64_t entries,
                           int64_t small, int64_t fn, at::ScalarType dtype, int64_t offsets, int64_t values,
                           int64_t bias, int64_t in, int64_t out, int64_t k, int64_t dst_long) {
    if (!accepts(x, dtype, in)) return {};
    if (x.size(0) > small) return diag_mm(x, fn, dtype, offsets, values, bias, in, out, k, dst_long);
    return copy_mm(x, pack_fn, blob, bias, in, out, k_pack, entries);
}

// A layer's eager call of its bound product, behind the checks that kernels.layers otherwise makes in Python:
// x a plain tensor (exactly torch.Tensor), no dispatch mode, nothing to differentiate (ops.direct's rules), and the
// layer's buffers still the ones bound (the same objects, in the same order of its _buffers dict, the copied ones
// at their bound versions: _KernelLinear._current's rule). With cold caches each of those Python checks cost
// 2-4 us at batch 1, mostly in the objects it touches; here each is a few loads. x may have any number of leading
// dimensions (the product runs its rows). Calling it gives y, or None when a check fails, x needs the general path,
// or the kernel reports an error: the layer then takes its Python path, which rebinds or raises.
class Guarded {
   public:
    using Product = std::function<torch::Tensor(const torch::Tensor&)>;

    // owner: the Python object holding what the product's addresses point into (the bound product, with its copy)
    Guarded(py::object owner, const py::tuple& buffers, const std::vector<torch::Tensor>& watched, int64_t in,
            int64_t out, Product product)
        : owner_(std::move(owner)), in_(in), out_(out), product_(std::move(product)) {
        for (const auto& buffer : buffers) buffers_.push_back(py::reinterpret_borrow<py::object>(buffer));
        for (const auto& tensor : watched) {
            const c10::VariableVersion& counter = tensor.unsafeGetTensorImpl()->version_counter();
            if (!counter.enabled()) continue;  // an inference tensor keeps no counter: only replacing it rebinds
            counters_.push_back(counter);
            versions_.push_back(counter.current_version());
        }
    }

    py::object operator()(py::handle x, py::handle buffers) const {
        PyObject* object = x.ptr();
        if (Py_TYPE(object) != reinterpret_cast<PyTypeObject*>(THPVariableClass) ||
            c10::impl::TorchDispatchModeTLS::any_modes_set() || !current(buffers.ptr()))
            return py::none();
        const torch::Tensor& input = THPVariable_Unpack(object);
        if (input.requires_grad() && at::GradMode::is_enabled()) return py::none();
        const int64_t dims = input.dim();
        if (dims < 1 || input.size(-1) != in_ || !input.is_contiguous()) return py::none();
        torch::Tensor y = product_(dims == 2 ? input : input.view({-1, in_}));
        if (!y.defined()) return py::none();
        if (dims != 2) {
            std::vector<int64_t> sizes = input.sizes().vec();
            sizes.back() = out_;
            y = y.view(sizes);
        }
        return py::cast(std::move(y));
    }

   private:
    bool current(PyObject* buffers) const {
        if (!PyDict_CheckExact(buffers) || PyDict_GET_SIZE(buffers) != Py_ssize_t(buffers_.size())) return false;
        Py_ssize_t position = 0;
        PyObject *key, *value;
        for (size_t i = 0; PyDict_Next(buffers, &position, &key, &value); ++i)
            if (value != buffers_[i].ptr()) return false;
        for (size_t i = 0; i < counters_.size(); ++i)
            if (counters_[i].current_version() != versions_[i]) return false;
        return true;
    }

    py::object owner_;
    std::vector<py::object> buffers_;
    std::vector<c10::VariableVersion> counters_;
    std::vector<uint32_t> versions_;
    int64_t in_, out_;
    Product product_;
};

// Defines guarded_<name>(owner, buffers, watched, in, out, *args): a Guarded that runs f(x, *args).
template <typename... Args>
void def_guarded(py::module& m, const char* name, torch::Tensor (*f)(const torch::Tensor&, Args...)) {
    m.def(name, [f](py::object owner, const py::tuple& buffers, const std::vector<torch::Tensor>& watched, int64_t in,
                    int64_t out, Args... args) {
        return Guarded(std::move(owner), buffers, watched, in, out,
                       [f, args...](const torch::Tensor& x) { return f(x, args...); });
    });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("diag_mm", &diag_mm);
    m.def("condensed_mm", &condensed_mm);
    m.def("lanes_mm", &lanes_mm);
    m.def("diag_pack_mm", &diag_pack_mm);
    py::class_<Guarded>(m, "Guarded").def("__call__", &Guarded::operator());
    def_guarded(m, "guarded_diag_mm", &diag_mm);
    def_guarded(m, "guarded_condensed_mm", &condensed_mm);
    def_guarded(m, "guarded_lanes_mm", &lanes_mm);
    def_guarded(m, "guarded_diag_pack_mm", &diag_pack_mm);
}
