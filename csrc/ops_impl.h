// The torch side of every op, written once and instantiated per backend:
// argument checks (ValueError / TypeError naming the argument), output
// allocation, dtype dispatch, and the host loops of velocity integration
// (forward, and a backward from saved or recomputed fields).
//
// Policy provides: Guard (device guard from a tensor), stream(tensor),
// kHalfTypes (dispatch half types too), kNccBuffers (the two full-size buffers of the NCC
// passes; the CPU kernels fuse the passes and need none),
// kInterleavedLevels (the CPU squaring steps' layout, see Levels),
// kGssWritesMovingGrad (the GSS backward writes every value of the
// moving-feature gradient itself: it may start uninitialised), kFusedMean
// (the NCC and GSS kernels sum a mean as they go; elsewhere it is the mean
// of the map, taken here).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <utility>
#include <vector>

#include "gemini/params.h"
#include "gemini/voxel_math.h"
#include "gemini/host_pages.h"

namespace gemini {

inline int parse_mode(c10::string_view mode) {
  if (mode == "bilinear") return kBilinear;
  if (mode == "nearest") return kNearest;
  TORCH_CHECK_VALUE(false, "gemini: mode must be 'bilinear' or 'nearest', got '", std::string(mode), "'");
}

inline int parse_padding(c10::string_view padding) {
  if (padding == "zeros") return kZeros;
  if (padding == "border") return kBorder;
  TORCH_CHECK_VALUE(false, "gemini: padding_mode must be 'zeros' or 'border', got '", std::string(padding), "'");
}

inline Geometry geometry_of(const at::Tensor& t) {
  Geometry g{};
  g.batch = t.size(0);
  g.channels = t.size(1);
  g.ndim = static_cast<int>(t.dim()) - 2;
  for (int k = 0; k < g.ndim; ++k) g.size[k] = t.size(k + 2);
  return g;
}

inline void check_volume(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4 || t.dim() == 5, "gemini: ", name, " must be (B, C, H, W) or (B, C, D, H, W), got ",
              t.sizes());
  TORCH_CHECK_VALUE(t.numel() > 0, "gemini: ", name, " is empty: ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "gemini: ", name, " must be floating point, got ",
              t.scalar_type());
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "gemini: ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "gemini: ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has ", ref.scalar_type());
}

inline void check_field(const at::Tensor& field, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_volume(field, name);
  check_like(field, name, ref, ref_name);
  bool ok = field.dim() == ref.dim() && field.size(0) == ref.size(0) && field.size(1) == ref.dim() - 2;
  for (int64_t k = 2; ok && k < ref.dim(); ++k) ok = field.size(k) == ref.size(k);
  TORCH_CHECK_VALUE(ok, "gemini: ", name, " must be (B, ndim, *spatial) matching ", ref_name, " ", ref.sizes(), ", got ",
              field.sizes());
}

// (count, *shape): the shape of `count` tensors of `shape` stacked
inline std::vector<int64_t> stacked(int64_t count, at::IntArrayRef shape) {
  std::vector<int64_t> out{count};
  out.insert(out.end(), shape.begin(), shape.end());
  return out;
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// A tensor a forward kept for its backward (the integration's fields, the
// NCC's box sums): `shape` (described as `what`), the accumulation dtype and
// the device of `like`.
inline void check_kept(const at::Tensor& t, const char* name, const char* what, const std::vector<int64_t>& shape,
                       const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), "gemini: ", name, " must be ", what, " = ",
                    at::IntArrayRef(shape), ", got ", t.sizes());
  const at::ScalarType acc = acc_dtype(like.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, "gemini: ", name, " must have dtype ", acc, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), "gemini: ", name, " is on ", t.device(), " but ", like_name,
                    " is on ", like.device());
}

template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<const T*>(t.data_ptr()) : nullptr;
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

template <class Backend, class Policy>
struct Ops {
  // f(tag) with tag a value of the kernel-side type of t
  template <typename F>
  static void dispatch(at::ScalarType t, F&& f) {
    if constexpr (Policy::kHalfTypes) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "gemini",
                                      [&] { f(typename KernelType<scalar_t>::type{}); });
    } else {
      AT_DISPATCH_FLOATING_TYPES(t, "gemini", [&] { f(typename KernelType<scalar_t>::type{}); });
    }
  }

  static at::Tensor empty_result(const at::Tensor& like) { return at::empty({0}, like.options()); }

  // An op's first tensor: a volume of a dtype this backend's kernels take.
  // Half types reach the host kernels only through gemini_ops' functions,
  // which compute them in float32 (functional._precision); a raw op does no
  // casting, so here they are a TypeError like any other unsupported dtype.
  static void check_input(const at::Tensor& t, const char* name) {
    check_volume(t, name);
    TORCH_CHECK_TYPE(Policy::kHalfTypes || acc_dtype(t.scalar_type()) == t.scalar_type(), "gemini: ", name,
                     " has dtype ", t.scalar_type(), ", but these kernels take float32 or float64 (gemini_ops.",
                     "functional casts float16/bfloat16 to float32)");
  }

  template <typename K>
  static WarpArgs<K> warp_args(const at::Tensor& image, const at::Tensor& ddf, int mode, int padding) {
    WarpArgs<K> a;
    a.geo = geometry_of(image);
    a.mode = mode;
    a.padding = padding;
    a.image = cptr<K>(image);
    a.ddf = cptr<K>(ddf);
    a.num_threads = at::get_num_threads();
    return a;
  }

  static at::Tensor warp(const at::Tensor& image_, const at::Tensor& ddf_, c10::string_view mode,
                         c10::string_view padding) {
    check_input(image_, "image");
    check_field(ddf_, "ddf", image_, "image");
    typename Policy::Guard guard(image_);
    const at::Tensor image = image_.contiguous(), ddf = ddf_.contiguous();
    at::Tensor out = Policy::empty(image.sizes(), image.options());
    const int m = parse_mode(mode), p = parse_padding(padding);
    dispatch(image.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      WarpArgs<K> a = warp_args<K>(image, ddf, m, p);
      a.out = mptr<K>(out);
      Backend::warp_forward(a, Policy::stream(image));
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> warp_backward(const at::Tensor& grad_, const at::Tensor& image_,
                                                          const at::Tensor& ddf_, c10::string_view mode,
                                                          c10::string_view padding, bool image_grad,
                                                          bool ddf_grad) {
    check_input(image_, "image");
    check_field(ddf_, "ddf", image_, "image");
    check_like(grad_, "grad", image_, "image");
    TORCH_CHECK_VALUE(grad_.sizes() == image_.sizes(), "gemini: grad must have the image's shape ", image_.sizes(),
                ", got ", grad_.sizes());
    typename Policy::Guard guard(image_);
    const at::Tensor image = image_.contiguous(), ddf = ddf_.contiguous(), grad = grad_.contiguous();
    const at::ScalarType acc = acc_dtype(image.scalar_type());
    at::Tensor gi = image_grad ? Policy::zeros(image.sizes(), image.options().dtype(acc)) : empty_result(image);
    at::Tensor gd = ddf_grad ? Policy::empty(ddf.sizes(), ddf.options()) : empty_result(ddf);
    const int m = parse_mode(mode), p = parse_padding(padding);
    if (image_grad || ddf_grad) {
      dispatch(image.scalar_type(), [&](auto tag) {
        using K = decltype(tag);
        WarpArgs<K> a = warp_args<K>(image, ddf, m, p);
        a.grad = cptr<K>(grad);
        a.grad_image = mptr<acc_t<K>>(gi);
        a.grad_ddf = mptr<K>(gd);
        Backend::warp_backward(a, Policy::stream(image));
      });
    }
    if (image_grad && gi.scalar_type() != image.scalar_type()) gi = gi.to(image.scalar_type());
    return {gi, gd};
  }

  // ---- scaling and squaring: u <- u + u o (id + u) ----
  // The fields u_k live in the working dtype (float for half types), which
  // is its own accumulation type; the squaring kernels run on it only.

  template <typename F>
  static void dispatch_work(at::ScalarType t, F&& f) {
    AT_DISPATCH_FLOATING_TYPES(t, "gemini integrate", [&] { f(scalar_t{}); });
  }

  // The levels u_k of one integration in the working dtype: (B, ndim, *S)
  // like the velocity, or on the CPU for 3D float fields interleaved,
  // (B, *S, 4) with a zero after each voxel's components (csrc/cpu/square.h).
  // Only the squaring steps see a level: inputs, outputs and saved fields
  // are (B, ndim, *S), converted where they enter or leave.
  struct Levels {
    Geometry geo;
    at::TensorOptions options;
    bool interleaved;
    std::vector<int64_t> level_shape, field_shape;

    explicit Levels(const at::Tensor& velocity)
        : geo(geometry_of(velocity)),
          options(velocity.options().dtype(acc_dtype(velocity.scalar_type()))),
          interleaved(Policy::kInterleavedLevels && geo.ndim == 3 && options.dtype() == at::kFloat &&
                      geo.nvox() < row_kernel_voxels()),
          level_shape(velocity.sizes().vec()),
          field_shape(velocity.sizes().vec()) {
      if (interleaved) level_shape = {geo.batch, geo.size[0], geo.size[1], geo.size[2], 4};
    }

    // One level. Each level is a tensor of its own: on the host, a level's
    // pages then serve the next call's levels (gemini/host_pages.h).
    at::Tensor empty() const { return Policy::empty(level_shape, options); }
    std::vector<at::Tensor> empty(int64_t count) const {
      std::vector<at::Tensor> levels;
      for (int64_t i = 0; i < count; ++i) levels.push_back(empty());
      return levels;
    }
    // the first target of a backward: zeroed where interleaved (square_backward)
    at::Tensor backward_target() const { return interleaved ? Policy::zeros(level_shape, options) : empty(); }
    // count fields (count, B, ndim, *S): the saved ones
    at::Tensor empty_fields(int64_t count) const { return Policy::empty(stacked(count, field_shape), options); }

    // level `into` = field (B, ndim, *S) times scale; returns into
    const at::Tensor& load(const at::Tensor& field, double scale, const at::Tensor& into) const {
      const at::Tensor f = field.to(options.dtype()).contiguous();
      if constexpr (Policy::kInterleavedLevels)
        if (interleaved) {
          Policy::to_levels(f.data_ptr<float>(), scale, into.data_ptr<float>(), geo.batch, geo.nvox());
          return into;
        }
      at::Tensor out = into;
      at::mul_out(out, f, scale);
      return into;
    }

    // field (B, ndim, *S) = level times scale
    void store(const at::Tensor& level, const at::Tensor& field, double scale = 1.0) const {
      if constexpr (Policy::kInterleavedLevels)
        if (interleaved) {
          Policy::from_levels(level.data_ptr<float>(), scale, field.data_ptr<float>(), geo.batch, geo.nvox());
          return;
        }
      at::Tensor out = field;
      at::mul_out(out, level, scale);
    }

    // a new field (B, ndim, *S) of its own: level (a workspace's) times scale
    at::Tensor field_of(const at::Tensor& level, double scale = 1.0) const {
      const at::Tensor f = Policy::empty(field_shape, options);
      store(level, f, scale);
      return f;
    }
  };

  template <typename K>
  static SquareArgs<K> square_args(const Levels& L, const at::Tensor& u, int padding) {
    SquareArgs<K> a;
    a.geo = L.geo;
    a.padding = padding;
    a.interleaved = L.interleaved;
    a.field = cptr<K>(u);
    a.num_threads = at::get_num_threads();
    return a;
  }

  // One squaring step from level u into level out.
  static void square(const Levels& L, const at::Tensor& u, const at::Tensor& out, int padding) {
    dispatch_work(u.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      SquareArgs<K> a = square_args<K>(L, u, padding);
      a.out = mptr<K>(out);
      Backend::square_forward(a, Policy::stream(u));
    });
  }

  // d loss / d u of one squaring step from d loss / d out = g, into out
  // (levels; interleaved ones: out zeroed on entry, g zeroed on return).
  static void square_backward(const Levels& L, const at::Tensor& g, const at::Tensor& u, const at::Tensor& out,
                              int padding) {
    dispatch_work(u.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      SquareArgs<K> a = square_args<K>(L, u, padding);
      a.grad = mptr<K>(g);
      a.grad_field = mptr<K>(out);
      Backend::square_backward(a, Policy::stream(u));
    });
  }

  static void check_integrate(const at::Tensor& velocity, int64_t num_steps) {
    check_input(velocity, "velocity");
    check_field(velocity, "velocity", velocity, "velocity");
    TORCH_CHECK_VALUE(num_steps >= 0, "gemini: num_steps must be >= 0, got ", num_steps);
  }

  // u_0 = velocity / 2^num_steps, into level `into`
  static at::Tensor first_level(const Levels& L, const at::Tensor& velocity, int64_t num_steps,
                                const at::Tensor& into) {
    return L.load(velocity, std::ldexp(1.0, -static_cast<int>(num_steps)), into);
  }

  // `steps` squarings from level `first`, returning the last level. Levels
  // at multiples of `every` go to `kept` (levels, or (B, ndim, *S) fields
  // when kept_fields) while it has room; the others to the two scratch
  // levels (allocated where undefined; the second may be `first` when the
  // caller is done with it).
  static at::Tensor squarings(const Levels& L, const at::Tensor& first, int64_t steps, int64_t every,
                              const std::vector<at::Tensor>& kept, bool kept_fields, at::Tensor* scratch, int p) {
    const bool convert = kept_fields && L.interleaved;
    const int64_t room = static_cast<int64_t>(kept.size());
    at::Tensor prev = first;
    for (int64_t k = 1, w = 0; k <= steps; ++k) {
      const at::Tensor keep = k % every == 0 && k / every <= room ? kept[k / every - 1] : at::Tensor();
      at::Tensor dst;
      if (keep.defined() && !convert) {
        dst = keep;
      } else {
        if (!scratch[w].defined()) scratch[w] = L.empty();
        dst = scratch[w];
        w ^= 1;
      }
      square(L, prev, dst, p);
      if (keep.defined() && convert) L.store(dst, keep);
      prev = dst;
    }
    return prev;
  }

  static at::Tensor integrate_velocity(const at::Tensor& velocity, int64_t num_steps, c10::string_view padding) {
    check_integrate(velocity, num_steps);
    const int p = parse_padding(padding);
    typename Policy::Guard guard(velocity);
    if (num_steps == 0) return velocity.clone(at::MemoryFormat::Contiguous);
    // two levels in all: nothing is kept for a backward
    const Levels L(velocity);
    const at::Tensor first = L.empty();
    at::Tensor scratch[2] = {L.empty(), first};
    const at::Tensor last =
        squarings(L, first_level(L, velocity, num_steps, first), num_steps, 1, {}, false, scratch, p);
    return L.field_of(last).to(velocity.scalar_type());
  }

  // The forward for autograd: the displacement, and the levels u_every,
  // u_2every, ... below num_steps ((num_steps - 1) / every fields), from
  // which integrate_velocity_backward recomputes only the levels in between.
  static std::tuple<at::Tensor, at::Tensor> integrate_velocity_with_fields(const at::Tensor& velocity,
                                                                           int64_t num_steps, int64_t every,
                                                                           c10::string_view padding) {
    check_integrate(velocity, num_steps);
    TORCH_CHECK_VALUE(every >= 1, "gemini: every must be >= 1, got ", every);
    const int p = parse_padding(padding);
    typename Policy::Guard guard(velocity);
    const Levels L(velocity);
    const at::Tensor fields = L.empty_fields(std::max<int64_t>(num_steps - 1, 0) / every);
    if (num_steps == 0) return {velocity.clone(at::MemoryFormat::Contiguous), fields};
    // the first level's place is the second scratch level once it is squared
    const at::Tensor first = L.empty();
    at::Tensor scratch[2] = {L.empty(), first};
    const at::Tensor last = squarings(L, first_level(L, velocity, num_steps, first), num_steps, every,
                                      fields.unbind(0), true, scratch, p);
    return {L.field_of(last).to(velocity.scalar_type()), fields};
  }

  // Without saved fields, up to this many steps the backward recomputes every
  // level and keeps them all; beyond, it keeps every ~sqrt(num_steps)-th
  // and recomputes the ones in between again segment by segment.
  static constexpr int64_t kKeepAllSteps = 8;

  static at::Tensor integrate_velocity_backward(const at::Tensor& grad, const at::Tensor& velocity,
                                                const at::Tensor& fields, int64_t num_steps, int64_t every,
                                                c10::string_view padding) {
    check_integrate(velocity, num_steps);
    check_like(grad, "grad", velocity, "velocity");
    TORCH_CHECK_VALUE(grad.sizes() == velocity.sizes(), "gemini: grad must have the velocity's shape ",
                      velocity.sizes(), ", got ", grad.sizes());
    TORCH_CHECK_VALUE(every >= 1, "gemini: every must be >= 1, got ", every);
    const int p = parse_padding(padding);
    typename Policy::Guard guard(velocity);
    const bool saved = fields.numel() > 0;
    if (saved) check_fields(fields, velocity, num_steps, every);
    if (num_steps == 0) return grad.clone(at::MemoryFormat::Contiguous);
    const Levels L(velocity);
    if (!saved)
      every = num_steps <= kKeepAllSteps ? 1
                                         : static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(num_steps))));
    const int64_t count = (num_steps - 1) / every;
    // two gradient levels, a segment's first level and the levels it recomputes
    const at::Tensor start = L.empty();
    const std::vector<at::Tensor> recomputed = L.empty(every - 1);
    std::vector<at::Tensor> ckpt;
    at::Tensor scratch[2];
    if (saved) {
      ckpt = fields.unbind(0);
    } else {  // levels, recomputed here
      ckpt = L.empty(count);
      squarings(L, first_level(L, velocity, num_steps, start), count * every, every, ckpt, false, scratch, p);
    }
    // backwards segment by segment; the checkpoints are only read; the
    // gradient alternates between two levels, the first a copy of grad
    const at::Tensor buf[2] = {L.load(grad, 1.0, L.empty()), L.backward_target()};
    int w = 1;
    for (int64_t s = count; s >= 0; --s) {
      const at::Tensor first = !s     ? first_level(L, velocity, num_steps, start)
                               : saved ? L.load(ckpt[s - 1], 1.0, start)
                                       : ckpt[s - 1];
      const int64_t steps = std::min(every, num_steps - s * every);
      const std::vector<at::Tensor> levels(recomputed.begin(), recomputed.begin() + (steps - 1));
      squarings(L, first, steps - 1, 1, levels, false, scratch, p);
      for (int64_t j = steps - 1; j >= 0; --j, w ^= 1)
        square_backward(L, buf[w ^ 1], j ? levels[j - 1] : first, buf[w], p);
    }
    return L.field_of(buf[w ^ 1], std::ldexp(1.0, -static_cast<int>(num_steps))).to(velocity.scalar_type());
  }

  static void check_fields(const at::Tensor& fields, const at::Tensor& velocity, int64_t num_steps, int64_t every) {
    check_kept(fields, "fields", "empty or ((num_steps - 1) // every, *velocity.shape)",
               stacked(std::max<int64_t>(num_steps - 1, 0) / every, velocity.sizes()), velocity, "velocity");
  }

  // ---- GSS ----

  template <typename K>
  static GssArgs<K> gss_args(const at::Tensor& fm, const at::Tensor& ff, const at::Tensor& ddf, double eps) {
    GssArgs<K> a;
    a.geo = geometry_of(fm);
    a.eps = eps;
    a.moving = cptr<K>(fm);
    a.fixed = cptr<K>(ff);
    a.ddf = cptr<K>(ddf);
    a.num_threads = at::get_num_threads();
    return a;
  }

  static void check_gss(const at::Tensor& fm, const at::Tensor& ff, const at::Tensor& ddf) {
    check_input(fm, "feat_moving");
    check_volume(ff, "feat_fixed");
    check_like(ff, "feat_fixed", fm, "feat_moving");
    TORCH_CHECK_VALUE(fm.sizes() == ff.sizes(), "gemini: feat_moving ", fm.sizes(), " and feat_fixed ", ff.sizes(),
                " must have the same shape");
    check_field(ddf, "ddf", fm, "feat_moving");
  }

  // The cosine and the mask per voxel (B, 1, *S), or with mean the masked
  // mean and the mask's sum (0-dim; the sum in the accumulation type).
  static std::tuple<at::Tensor, at::Tensor> gss(const at::Tensor& fm_, const at::Tensor& ff_, const at::Tensor& ddf_,
                                                double eps, double, double, double, bool mean) {
    check_gss(fm_, ff_, ddf_);
    typename Policy::Guard guard(fm_);
    const at::Tensor fm = fm_.contiguous(), ff = ff_.contiguous(), ddf = ddf_.contiguous();
    const bool fused = mean && Policy::kFusedMean;
    std::vector<int64_t> shape = fm.sizes().vec();
    shape[1] = 1;
    if (fused) shape.clear();
    at::Tensor cos = Policy::empty(shape, fm.options()), mask = Policy::empty(shape, fm.options());
    dispatch(fm.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      GssArgs<K> a = gss_args<K>(fm, ff, ddf, eps);
      a.cos = mptr<K>(cos);
      a.mask = mptr<K>(mask);
      a.mean = fused;
      Backend::gss_forward(a, Policy::stream(fm));
    });
    if (!mean || fused) return {cos, mask};  // the fused kernels' types are their own accumulation types
    const at::ScalarType acc = acc_dtype(fm.scalar_type());
    const at::Tensor count = mask.sum(acc);
    return {((cos * mask).sum(acc) / count.clamp_min(1e-6)).to(fm.scalar_type()), count};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> gss_backward(const at::Tensor& grad_, const at::Tensor& fm_,
                                                                     const at::Tensor& ff_, const at::Tensor& ddf_,
                                                                     double eps, double scale_moving,
                                                                     double scale_fixed, double scale_ddf) {
    check_gss(fm_, ff_, ddf_);
    check_like(grad_, "grad", fm_, "feat_moving");
    const bool mean = grad_.dim() == 0;
    TORCH_CHECK_VALUE(mean || grad_.numel() == fm_.numel() / fm_.size(1),
                      "gemini: grad must be (B, 1, *spatial) or have no dimensions (the gradient of the mean at "
                      "every voxel in the mask), got ", grad_.sizes());
    typename Policy::Guard guard(fm_);
    const at::Tensor fm = fm_.contiguous(), ff = ff_.contiguous(), ddf = ddf_.contiguous(), grad = grad_.contiguous();
    const at::ScalarType acc = acc_dtype(fm.scalar_type());
    at::Tensor gm = scale_moving == 0                ? empty_result(fm)
                    : Policy::kGssWritesMovingGrad ? Policy::empty(fm.sizes(), fm.options().dtype(acc))
                                                   : Policy::zeros(fm.sizes(), fm.options().dtype(acc));
    at::Tensor gf = scale_fixed != 0 ? Policy::empty(ff.sizes(), ff.options()) : empty_result(ff);
    at::Tensor gd = scale_ddf != 0 ? Policy::empty(ddf.sizes(), ddf.options()) : empty_result(ddf);
    dispatch(fm.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      GssArgs<K> a = gss_args<K>(fm, ff, ddf, eps);
      a.grad = cptr<K>(grad);
      a.mean = mean;
      a.scale_moving = scale_moving;
      a.scale_fixed = scale_fixed;
      a.scale_ddf = scale_ddf;
      a.grad_moving = mptr<acc_t<K>>(gm);
      a.grad_fixed = mptr<K>(gf);
      a.grad_ddf = mptr<K>(gd);
      Backend::gss_backward(a, Policy::stream(fm));
    });
    if (gm.numel() && gm.scalar_type() != fm.scalar_type()) gm = gm.to(fm.scalar_type());
    return {gm, gf, gd};
  }

  // ---- local NCC ----

  static void check_ncc(const at::Tensor& a, const at::Tensor& b, int64_t window) {
    check_input(a, "a");
    check_volume(b, "b");
    check_like(b, "b", a, "a");
    TORCH_CHECK_VALUE(a.sizes() == b.sizes(), "gemini: a ", a.sizes(), " and b ", b.sizes(), " must have the same shape");
    TORCH_CHECK_VALUE(window >= 1 && window % 2 == 1, "gemini: window must be an odd int >= 1, got ", window);
  }

  template <typename K>
  static NccArgs<K> ncc_args(const at::Tensor& a, const at::Tensor& b, int64_t window, bool squared, double eps,
                             const at::Tensor& buf0, const at::Tensor& buf1) {
    NccArgs<K> n;
    n.geo = geometry_of(a);
    n.window = static_cast<int>(window);
    n.squared = squared;
    n.eps = eps;
    n.a = cptr<K>(a);
    n.b = cptr<K>(b);
    n.buf0 = mptr<acc_t<K>>(buf0);
    n.buf1 = mptr<acc_t<K>>(buf1);
    n.num_threads = at::get_num_threads();
    return n;
  }

  static at::Tensor ncc_buffer(const at::Tensor& a, bool needed = true) {
    return Policy::empty({Policy::kNccBuffers && needed ? 5 * a.numel() : 0},
                         a.options().dtype(acc_dtype(a.scalar_type())));
  }

  // The value per voxel, or with mean its mean (0-dim); and the box sums for
  // the backward if keep_sums (else empty).
  static std::tuple<at::Tensor, at::Tensor> local_ncc(const at::Tensor& a_, const at::Tensor& b_, int64_t window,
                                                      bool squared, double eps, bool keep_sums, bool mean) {
    check_ncc(a_, b_, window);
    typename Policy::Guard guard(a_);
    const at::Tensor a = a_.contiguous(), b = b_.contiguous();
    const auto acc = a.options().dtype(acc_dtype(a.scalar_type()));
    at::Tensor out =
        mean && Policy::kFusedMean ? at::empty({}, a.options()) : Policy::empty(a.sizes(), a.options());
    at::Tensor sums = keep_sums ? Policy::empty(stacked(5, a.sizes()), acc) : at::empty({0}, acc);
    const at::Tensor buf0 = ncc_buffer(a, !keep_sums), buf1 = ncc_buffer(a);
    dispatch(a.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      NccArgs<K> n = ncc_args<K>(a, b, window, squared, eps, buf0, buf1);
      n.out = mptr<K>(out);
      n.mean = mean && Policy::kFusedMean;
      n.kept_sums = keep_sums ? mptr<acc_t<K>>(sums) : nullptr;
      Backend::ncc_forward(n, Policy::stream(a));
    });
    return {mean && !Policy::kFusedMean ? out.mean() : out, sums};
  }

  static std::tuple<at::Tensor, at::Tensor> local_ncc_backward(const at::Tensor& grad_, const at::Tensor& a_,
                                                               const at::Tensor& b_, const at::Tensor& sums_,
                                                               int64_t window, bool squared, double eps, bool a_grad,
                                                               bool b_grad) {
    check_ncc(a_, b_, window);
    check_like(grad_, "grad", a_, "a");
    const bool mean = grad_.dim() == 0;
    TORCH_CHECK_VALUE(mean || grad_.sizes() == a_.sizes(), "gemini: grad must have the shape of a ", a_.sizes(),
                      " or no dimensions (the gradient of the mean), got ", grad_.sizes());
    check_kept(sums_, "sums", "the forward's box sums, (5, *a.shape)", stacked(5, a_.sizes()), a_, "a");
    typename Policy::Guard guard(a_);
    const at::Tensor a = a_.contiguous(), b = b_.contiguous(), sums = sums_.contiguous();
    const at::Tensor grad =
        mean && !Policy::kFusedMean ? (grad_ / a.numel()).expand(a.sizes()).contiguous() : grad_.contiguous();
    at::Tensor ga = a_grad ? Policy::empty(a.sizes(), a.options()) : empty_result(a);
    at::Tensor gb = b_grad ? Policy::empty(b.sizes(), b.options()) : empty_result(b);
    if (!(a_grad || b_grad)) return {ga, gb};
    const at::Tensor buf0 = ncc_buffer(a), buf1 = ncc_buffer(a);
    dispatch(a.scalar_type(), [&](auto tag) {
      using K = decltype(tag);
      NccArgs<K> n = ncc_args<K>(a, b, window, squared, eps, buf0, buf1);
      n.sums = cptr<acc_t<K>>(sums);
      n.grad = cptr<K>(grad);
      n.mean = mean && Policy::kFusedMean;
      n.grad_a = mptr<K>(ga);
      n.grad_b = mptr<K>(gb);
      Backend::ncc_backward(n, Policy::stream(a));
    });
    return {ga, gb};
  }

  static void register_impls(torch::Library& m) {
    m.impl("warp", &warp);
    m.impl("warp_backward", &warp_backward);
    m.impl("integrate_velocity", &integrate_velocity);
    m.impl("integrate_velocity_with_fields", &integrate_velocity_with_fields);
    m.impl("integrate_velocity_backward", &integrate_velocity_backward);
    m.impl("gss", &gss);
    m.impl("gss_backward", &gss_backward);
    m.impl("local_ncc", &local_ncc);
    m.impl("local_ncc_backward", &local_ncc_backward);
  }
};

// Host tensors: no device guard, no stream.
// Host tensors of the ops (outputs and buffers) on the huge pages of
// gemini/host_pages.h from kHostPagesFrom bytes on, reused between calls:
// torch's allocator gives huge pages only to every tensor of a process,
// with THP_MEM_ALLOC_ENABLE=1, and maps blocks over 32 MiB afresh each time.
inline at::Tensor host_tensor(at::IntArrayRef sizes, const at::TensorOptions& options, bool zeroed) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  void* map = nullptr;
  size_t length = 0;
  if (void* data = map_host_pages(bytes, zeroed, &map, &length))
    return at::from_blob(data, sizes, [map, length](void*) { unmap_host_pages(map, length); }, options);
  return zeroed ? at::zeros(sizes, options) : at::empty(sizes, options);
}

// The batch items of (count, n) work on torch's threads: f(item, v0, v1).
template <typename F>
void for_item_ranges(int64_t count, int64_t n, F&& f) {
  at::parallel_for(0, count * n, 1 << 15, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t item = i / n, v0 = i - item * n, v1 = std::min(n, v0 + (i1 - i));
      f(item, v0, v1);
      i += v1 - v0;
    }
  });
}

struct HostPolicy {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  // The CPU squaring steps' interleaved levels (Ops::Levels): levels
  // (count, n, 4) = scale * fields (count, 3, n) with zeros in the fourth
  // values, and back. Memory-bound copies, vectorised by the compiler.
  static void to_levels(const float* fields, double scale, float* levels, int64_t count, int64_t n) {
    convert_levels<true>(fields, scale, levels, count, n);
  }
  static void from_levels(const float* levels, double scale, float* fields, int64_t count, int64_t n) {
    convert_levels<false>(levels, scale, fields, count, n);
  }
  template <bool kToLevels>
  static void convert_levels(const float* in, double scale, float* out, int64_t count, int64_t n) {
    const float s = static_cast<float>(scale);
    for_item_ranges(count, n, [&](int64_t item, int64_t v0, int64_t v1) {
      const float* x = in + item * (kToLevels ? 3 : 4) * n;
      float* y = out + item * (kToLevels ? 4 : 3) * n;
      if constexpr (kToLevels)
        for (int64_t v = v0; v < v1; ++v) {
          y[4 * v] = s * x[v];
          y[4 * v + 1] = s * x[n + v];
          y[4 * v + 2] = s * x[2 * n + v];
          y[4 * v + 3] = 0.f;
        }
      else
        for (int64_t v = v0; v < v1; ++v) {
          y[v] = s * x[4 * v];
          y[n + v] = s * x[4 * v + 1];
          y[2 * n + v] = s * x[4 * v + 2];
        }
    });
  }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& o) { return host_tensor(sizes, o, false); }
  static at::Tensor zeros(at::IntArrayRef sizes, const at::TensorOptions& o) { return host_tensor(sizes, o, true); }
  static void* stream(const at::Tensor&) { return nullptr; }
  static constexpr bool kHalfTypes = false;
  static constexpr bool kGssWritesMovingGrad = true;
  static constexpr bool kNccBuffers = false;
  static constexpr bool kInterleavedLevels = true;
  static constexpr bool kFusedMean = true;
};

// The emulated CUDA kernels scatter with atomics and need no coefficient
// buffer; they run the NCC passes one by one, through the two buffers.
struct EmulatedPolicy : HostPolicy {
  static constexpr bool kGssWritesMovingGrad = false;
  static constexpr bool kNccBuffers = true;
  static constexpr bool kInterleavedLevels = false;
  static constexpr bool kFusedMean = false;
};

void define_schemas(torch::Library& m);

}  // namespace gemini
