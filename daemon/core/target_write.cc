#include "daemon/core/target_write.h"

#include "daemon/common/status.h"

namespace wsync::core {

layout::LoraFactors LoraFactorsOf(const layout::ModelSpec& spec, const Adapter& ad, const float* A, const float* B) {
  layout::LoraFactors f;
  f.a = A;
  f.a_cols = spec.tensor(ad.a).shape.d[1];
  f.b = B;
  f.b_cols = spec.tensor(ad.b).shape.d[1];
  f.rank = ad.rank;
  f.transposed = ad.convention == LoraConvention::kDeepSpeed;
  return f;
}

void AddTargetOp(const layout::ModelSpec& spec, LoraMode mode, const layout::CopyOp& c, const TargetOp& in,
                 bool merge_dims, uint64_t* word, TargetWrite* out) {
  const bool moves = MovesWeights(mode);
  if (moves && in.base != nullptr) out->base_copies.push_back(layout::LowerCopy(c, in.src, *in.base));
  kernels::BoxCopyOp box;
  uint64_t w0 = 0;
  if (in.adapter == nullptr || mode == LoraMode::kNone) {
    box = layout::LowerCopy(c, in.src, in.dst, merge_dims);
    *word += kernels::BoxPayloadWords(&box, 1, *word, &w0);
    out->copies.push_back(box);
    out->copy_words.push_back(w0);
  } else {
    const Adapter& ad = *in.adapter;
    layout::MatrixView w;
    layout::DType w_dtype;
    double scaling = ad.scaling;
    if (mode == LoraMode::kMerge) {  // W as it arrives
      w = layout::LowerMatrix(c, c.src_box, in.src);
      w_dtype = in.src.spec->dtype;
    } else if (mode == LoraMode::kAdapterOnly) {  // the pristine base
      w = layout::LowerMatrix(c, c.dst_box, *in.base);
      w_dtype = layout::DType::kF32;
    } else {  // unmerge: the live weights themselves
      w = layout::LowerMatrix(c, c.dst_box, in.live);
      w_dtype = in.live.spec->dtype;
      scaling = -scaling;
    }
    out->loras.push_back(layout::LowerLoraMerge(c, LoraFactorsOf(spec, ad, in.lora_a, in.lora_b), w, w_dtype,
                                                layout::LowerMatrix(c, c.dst_box, in.dst), in.dst.spec->dtype,
                                                static_cast<float>(scaling)));
    box = merge_dims && in.src.base != nullptr ? layout::LowerCopy(c, in.src, in.dst, true)
                                               : layout::LowerBox(c.dst_box, in.dst);
    *word += kernels::BoxPayloadWords(&box, 1, *word, &w0);
    out->lora_boxes.push_back(box);
    out->lora_words.push_back(w0);
  }
  out->boxes.push_back(box);
  out->box_words.push_back(w0);
}

absl::Status RunTargetWrite(ExecContext* ctx, int device, const TargetWrite& w, size_t slot) {
  WSYNC_RETURN_IF_ERROR(ctx->Copy(device, w.base_copies.data(), w.base_copies.size()));
  WSYNC_RETURN_IF_ERROR(ctx->CopyDigest(device, w.copies.data(), w.copies.size(), w.copy_words.data(), slot));
  WSYNC_RETURN_IF_ERROR(ctx->LoraMerge(device, w.loras.data(), w.loras.size()));
  return ctx->Digest(device, w.lora_boxes.data(), w.lora_boxes.size(), w.lora_words.data(), slot);
}

}  // namespace wsync::core
