#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/box_copy.h"

namespace wsync::kernels {
namespace {

TEST_CASE("a 2-d box of a row-major matrix, worked by hand") {
  // src 3x4 = [[0 1 2 3] [4 5 6 7] [8 9 10 11]]; copy rows 1..2, cols 1..2
  // into the top-left of a 2x3 dst: [[5 6 -] [9 10 -]].
  std::vector<float> src(12);
  for (int i = 0; i < 12; ++i) src[i] = static_cast<float>(i);
  std::vector<float> dst(6, -1.0f);
  BoxCopyOp op;
  op.src = src.data() + 1 * 4 + 1;
  op.dst = dst.data();
  op.ndim = 2;
  op.extent[0] = 2;
  op.extent[1] = 2;
  op.src_stride[0] = 4;
  op.src_stride[1] = 1;
  op.dst_stride[0] = 3;
  op.dst_stride[1] = 1;
  REQUIRE(CheckBoxCopyOps(&op, 1).empty());
  BoxCopyCpu(&op, 1, 1);
  CHECK(dst == std::vector<float>{5, 6, -1, 9, 10, -1});
  CHECK(BoxCopyBytes(&op, 1) == 16);
}

TEST_CASE("a transposing copy and a zero fill") {
  std::vector<uint16_t> src = {1, 2, 3, 4, 5, 6};  // 2x3 bf16 bits
  std::vector<uint16_t> dst(6, 0xffff);             // 3x2
  BoxCopyOp t;
  t.src = src.data();
  t.dst = dst.data();
  t.src_dtype = t.dst_dtype = DType::kBF16;
  t.ndim = 2;
  t.extent[0] = 2;
  t.extent[1] = 3;
  t.src_stride[0] = 3;
  t.src_stride[1] = 1;
  t.dst_stride[0] = 1;  // dst[c][r]
  t.dst_stride[1] = 2;
  BoxCopyCpu(&t, 1, 1);
  CHECK(dst == std::vector<uint16_t>{1, 4, 2, 5, 3, 6});

  BoxCopyOp fill;
  fill.src = nullptr;
  fill.dst = dst.data() + 2;
  fill.dst_dtype = DType::kBF16;
  fill.ndim = 1;
  fill.extent[0] = 3;
  fill.dst_stride[0] = 1;
  BoxCopyCpu(&fill, 1, 1);
  CHECK(dst == std::vector<uint16_t>{1, 4, 0, 0, 0, 6});
}

// Element-by-element reference written independently of the row kernel.
void NaiveCopy(const BoxCopyOp& op) {
  int64_t idx[kMaxBoxDims] = {0, 0, 0, 0};
  int64_t total = 1;
  for (int d = 0; d < op.ndim; ++d) total *= op.extent[d];
  for (int64_t e = 0; e < total; ++e) {
    int64_t rem = e, so = 0, dof = 0;
    for (int d = op.ndim - 1; d >= 0; --d) {
      idx[d] = rem % op.extent[d];
      rem /= op.extent[d];
      so += idx[d] * op.src_stride[d];
      dof += idx[d] * op.dst_stride[d];
    }
    if (op.src == nullptr) {
      std::memset(static_cast<char*>(op.dst) + dof * DTypeSize(op.dst_dtype), 0,
                  DTypeSize(op.dst_dtype));
    } else if (op.src_dtype == op.dst_dtype) {
      std::memcpy(static_cast<char*>(op.dst) + dof * DTypeSize(op.dst_dtype),
                  static_cast<const char*>(op.src) + so * DTypeSize(op.src_dtype),
                  DTypeSize(op.dst_dtype));
    } else {
      StoreFromF32(op.dst, op.dst_dtype, dof, LoadAsF32(op.src, op.src_dtype, so));
    }
  }
}

TEST_CASE("random batches match the element-by-element reference, every dtype pair, 1-4 threads") {
  std::mt19937 rng(1234);
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (DType st : types) {
    for (DType dt : types) {
      // Source: 4-d [5, 7, 9, 33] filled with random bit patterns.
      const int64_t sshape[4] = {5, 7, 9, 33};
      const int64_t sn = 5 * 7 * 9 * 33;
      std::vector<uint8_t> src(sn * DTypeSize(st));
      for (auto& b : src) b = static_cast<uint8_t>(rng());
      std::vector<BoxCopyOp> ops;
      const int64_t dn = 1 << 16;
      std::vector<uint8_t> want(dn * DTypeSize(dt), 0xab), got(dn * DTypeSize(dt), 0xab);
      int64_t cursor = 0;
      for (int i = 0; i < 40; ++i) {
        BoxCopyOp op;
        op.ndim = 1 + static_cast<int>(rng() % 4);
        op.src_dtype = st;
        op.dst_dtype = dt;
        int64_t soff = 0, sstride = 1, elems = 1;
        // Box inside the last `ndim` dims of the source, random offsets.
        for (int d = op.ndim - 1; d >= 0; --d) {
          int sd = 4 - op.ndim + d;
          op.extent[d] = 1 + static_cast<int64_t>(rng() % sshape[sd]);
          int64_t o = static_cast<int64_t>(rng() % (sshape[sd] - op.extent[d] + 1));
          op.src_stride[d] = sstride;
          soff += o * sstride;
          sstride *= sshape[sd];
          elems *= op.extent[d];
        }
        // Destination: dense, but dims in reverse order half the time.
        bool transpose = rng() % 2;
        int64_t dstride = 1;
        if (transpose) {
          for (int d = 0; d < op.ndim; ++d) {
            op.dst_stride[d] = dstride;
            dstride *= op.extent[d];
          }
        } else {
          for (int d = op.ndim - 1; d >= 0; --d) {
            op.dst_stride[d] = dstride;
            dstride *= op.extent[d];
          }
        }
        if (cursor + elems > dn) break;
        op.src = rng() % 8 == 0 ? nullptr : src.data() + soff * DTypeSize(st);
        op.dst = nullptr;
        BoxCopyOp ref = op;
        ref.dst = want.data() + cursor * DTypeSize(dt);
        op.dst = got.data() + cursor * DTypeSize(dt);
        NaiveCopy(ref);
        ops.push_back(op);
        cursor += elems;
      }
      REQUIRE(CheckBoxCopyOps(ops.data(), ops.size()).empty());
      for (int threads : {1, 2, 4}) {
        std::fill(got.begin(), got.end(), 0xab);
        BoxCopyCpu(ops.data(), ops.size(), threads);
        INFO(DTypeName(st) << " -> " << DTypeName(dt) << ", threads " << threads);
        REQUIRE(got == want);
      }
    }
  }
}

TEST_CASE("large batches split across threads give identical bytes") {
  const int64_t rows = 2048, cols = 1024;
  std::vector<float> src(rows * cols);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.37f;
  std::vector<uint16_t> one(rows * cols), two(rows * cols);
  BoxCopyOp op;
  op.src = src.data();
  op.src_dtype = DType::kF32;
  op.dst_dtype = DType::kBF16;
  op.ndim = 2;
  op.extent[0] = rows;
  op.extent[1] = cols;
  op.src_stride[0] = op.dst_stride[0] = cols;
  op.src_stride[1] = op.dst_stride[1] = 1;
  op.dst = one.data();
  BoxCopyCpu(&op, 1, 1);
  op.dst = two.data();
  BoxCopyCpu(&op, 1, 2);
  CHECK(one == two);
  CHECK(one[12345] == F32ToBf16(12345 * 0.37f));
}

TEST_CASE("batches beyond the caches take the streaming-store path and stay exact") {
  // 40 MiB of bf16 in 3 column blocks of odd widths, to misaligned targets.
  const int64_t rows = 4096, cols = 5125;  // 5125 * 2 bytes per source row
  std::vector<uint16_t> src(rows * cols);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 2654435761u >> 7);
  std::vector<uint16_t> got(rows * cols + 64, 0), want(rows * cols + 64, 0);
  std::vector<BoxCopyOp> ops;
  const int64_t widths[3] = {2051, 1537, 1537};
  int64_t col = 0, at = 3;  // odd element offset: unaligned destination
  for (int64_t w : widths) {
    BoxCopyOp op;
    op.src = src.data() + col;
    op.dst = got.data() + at;
    op.src_dtype = op.dst_dtype = DType::kBF16;
    op.ndim = 2;
    op.extent[0] = rows;
    op.extent[1] = w;
    op.src_stride[0] = cols;
    op.src_stride[1] = 1;
    op.dst_stride[0] = w;
    op.dst_stride[1] = 1;
    ops.push_back(op);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(&want[at + r * w], &src[r * cols + col], w * 2);
    }
    col += w;
    at += rows * w;
  }
  REQUIRE(BoxCopyBytes(ops.data(), ops.size()) >= (32u << 20));
  for (int threads : {1, 2}) {
    std::fill(got.begin(), got.end(), 0);
    BoxCopyCpu(ops.data(), ops.size(), threads);
    CHECK(got == want);
  }
}

TEST_CASE("bad ops are rejected with a message naming the op") {
  BoxCopyOp ok;
  float x = 0, y = 0;
  ok.src = &x;
  ok.dst = &y;
  ok.extent[0] = 1;
  ok.src_stride[0] = ok.dst_stride[0] = 1;
  BoxCopyOp ops[2] = {ok, ok};
  ops[1].ndim = 5;
  CHECK(CheckBoxCopyOps(ops, 2) == "box copy op 1: ndim 5 outside [1, 4]");
  ops[1] = ok;
  ops[1].extent[0] = 0;
  CHECK(CheckBoxCopyOps(ops, 2) == "box copy op 1: extent[0] = 0 (must be >= 1)");
  ops[1] = ok;
  ops[1].dst = nullptr;
  CHECK(CheckBoxCopyOps(ops, 2) == "box copy op 1: null destination");
  ops[1] = ok;
  ops[1].dst_dtype = DType::kF8E4M3;
  CHECK(CheckBoxCopyOps(ops, 2) ==
        "box copy op 1: conversion fp32 -> fp8_e4m3 is not supported (fp8_e4m3 is reserved: "
        "copies only)");
  ops[1].src_dtype = DType::kF8E4M3;
  CHECK(CheckBoxCopyOps(ops, 2).empty());
}

}  // namespace
}  // namespace wsync::kernels

namespace wsync::kernels {
namespace {

TEST_CASE("copy digests equal re-read digests and the digest of the padded payload") {
  // Two ops: a 3x5 bf16 box (10-byte rows, padded to 16) and a transposed
  // 4x3 fp32 box (strided rows of 12 bytes, padded to 16).
  std::vector<uint16_t> a(3 * 5);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint16_t>(0x1000 + i);
  std::vector<float> b(3 * 4);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i) + 0.5f;
  std::vector<uint16_t> da(15, 0);
  std::vector<float> db(12, 0);
  BoxCopyOp ops[2];
  ops[0].src = a.data();
  ops[0].dst = da.data();
  ops[0].src_dtype = ops[0].dst_dtype = DType::kBF16;
  ops[0].ndim = 2;
  ops[0].extent[0] = 3;
  ops[0].extent[1] = 5;
  ops[0].src_stride[0] = ops[0].dst_stride[0] = 5;
  ops[0].src_stride[1] = ops[0].dst_stride[1] = 1;
  ops[1].src = b.data();  // b is 3x4; dst holds its transpose 4x3
  ops[1].dst = db.data();
  ops[1].ndim = 2;
  ops[1].extent[0] = 4;
  ops[1].extent[1] = 3;
  ops[1].src_stride[0] = 1;
  ops[1].src_stride[1] = 4;
  ops[1].dst_stride[0] = 1;  // strided destination rows
  ops[1].dst_stride[1] = 4;
  uint64_t base[2];
  CHECK(BoxPayloadWords(ops, 2, 10, base) == 3 * 2 + 4 * 2);
  CHECK(base[0] == 10);
  CHECK(base[1] == 16);
  DigestSums sent = BoxCopyDigestCpu(ops, 2, base, 1);
  DigestSums got = BoxDigestCpu(ops, 2, base, 2);
  CHECK(sent.s1 == got.s1);
  CHECK(sent.s2 == got.s2);
  // The same payload laid out by hand: rows padded to 8-byte multiples.
  std::vector<uint8_t> payload(14 * 8, 0);
  for (int r = 0; r < 3; ++r) std::memcpy(&payload[r * 16], &a[r * 5], 10);
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 3; ++c) std::memcpy(&payload[48 + r * 16 + c * 4], &b[c * 4 + r], 4);
  }
  DigestSums want = DigestPartial(payload.data(), payload.size(), 10);
  CHECK(want.s1 == sent.s1);
  CHECK(want.s2 == sent.s2);
  // A changed byte in the destination shows up in the re-read digest only.
  db[5] += 1.0f;
  DigestSums after = BoxDigestCpu(ops, 2, base, 1);
  CHECK(after.s1 != sent.s1);
}

// The digest of a padded payload, one DigestTerm per word (digest.h's definition).
DigestSums NaiveDigest(const std::vector<uint8_t>& payload, uint64_t first_word) {
  DigestSums s;
  for (size_t i = 0; i * 8 < payload.size(); ++i) {
    uint64_t w = 0;
    std::memcpy(&w, payload.data() + 8 * i, std::min<size_t>(8, payload.size() - 8 * i));
    DigestTerm(w, first_word + i, &s);
  }
  return s;
}

TEST_CASE("the one-pass copy digest of long rows matches the word-by-word definition") {
  // Contiguous rows of bf16 long enough for the 64-byte blocks, with tails of
  // every kind (none, whole words, a partial word), to aligned and misaligned
  // destinations; small batches and one beyond the caches (streaming stores).
  std::mt19937_64 rng(7);
  for (int64_t row_elems : {32, 33, 96, 100, 511, 2048}) {
    for (int64_t dst_shift : {0, 1, 4, 32}) {
      for (int64_t rows : {int64_t{5}, int64_t{(40ll << 20) / 4096}}) {
        if (rows > 5 && (row_elems != 2048 || (dst_shift != 0 && dst_shift != 1))) continue;
        const int64_t src_cols = row_elems + 3;  // strided source rows
        std::vector<uint16_t> src(rows * src_cols);
        for (auto& v : src) v = static_cast<uint16_t>(rng());
        std::vector<uint16_t> dst(rows * row_elems + 64, 0);
        uint16_t* d = reinterpret_cast<uint16_t*>(
            (reinterpret_cast<uintptr_t>(dst.data()) + 63) / 64 * 64) + dst_shift;
        BoxCopyOp op;
        op.src = src.data() + 1;
        op.dst = d;
        op.src_dtype = op.dst_dtype = DType::kBF16;
        op.ndim = 2;
        op.extent[0] = rows;
        op.extent[1] = row_elems;
        op.src_stride[0] = src_cols;
        op.src_stride[1] = op.dst_stride[1] = 1;
        op.dst_stride[0] = row_elems;
        uint64_t base;
        BoxPayloadWords(&op, 1, 1000, &base);
        const size_t padded = (row_elems * 2 + 7) / 8 * 8;
        std::vector<uint8_t> payload(rows * padded, 0);
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(&payload[r * padded], &src[r * src_cols + 1], row_elems * 2);
        }
        const DigestSums want = NaiveDigest(payload, 1000);
        for (int threads : {1, 2}) {
          std::fill(dst.begin(), dst.end(), 0);
          INFO("row of " << row_elems << " bf16, destination +" << dst_shift << ", " << rows
                         << " rows, " << threads << " thread(s)");
          const DigestSums sent = BoxCopyDigestCpu(&op, 1, &base, threads);
          CHECK(sent.s1 == want.s1);
          CHECK(sent.s2 == want.s2);
          bool same = true;
          for (int64_t r = 0; r < rows && same; ++r) {
            same = std::memcmp(d + r * row_elems, &src[r * src_cols + 1], row_elems * 2) == 0;
          }
          CHECK(same);
          const DigestSums got = BoxDigestCpu(&op, 1, &base, threads);
          CHECK(got.s1 == want.s1);
          CHECK(got.s2 == want.s2);
        }
      }
    }
  }
}

TEST_CASE("GPU tiles cover every element once and cut long rows on 8-byte word boundaries") {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<BoxCopyOp> ops;
    const int nops = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < nops; ++i) {
      BoxCopyOp op;
      op.dst = reinterpret_cast<void*>(uintptr_t{256});
      op.dst_dtype = std::vector<DType>{DType::kF32, DType::kBF16, DType::kF16}[rng() % 3];
      op.ndim = 1 + static_cast<int>(rng() % 3);
      for (int d = 0; d < op.ndim; ++d) op.extent[d] = 1 + static_cast<int64_t>(rng() % (d == op.ndim - 1 ? 200 : 5));
      ops.push_back(op);
    }
    const uint64_t tile_bytes = std::vector<uint64_t>{1, 8, 13, 16, 40, 64, 1000}[rng() % 7];
    const uint64_t rounded = std::max<uint64_t>(8, tile_bytes / 8 * 8);
    std::vector<BoxTile> tiles = MakeBoxTiles(ops.data(), ops.size(), tile_bytes);
    for (size_t i = 0; i < ops.size(); ++i) {
      const BoxCopyOp& op = ops[i];
      int64_t rows = 1;
      for (int d = 0; d + 1 < op.ndim; ++d) rows *= op.extent[d];
      const int64_t cols = op.extent[op.ndim - 1];
      const int64_t esz = DTypeSize(op.dst_dtype);
      const int64_t row_words = (cols * esz + 7) / 8;
      std::vector<int> elem(rows * cols, 0), words(rows * row_words, 0);
      for (const BoxTile& t : tiles) {
        if (t.op != i) continue;
        INFO("op " << i << " rows [" << t.row_begin << ", " << t.row_end << ") cols [" << t.col_begin << ", "
                   << t.col_end << "), " << cols << " cols of " << esz << " bytes, tile_bytes " << tile_bytes);
        REQUIRE(0 <= t.row_begin);
        REQUIRE(t.row_begin < t.row_end);
        REQUIRE(t.row_end <= rows);
        REQUIRE(0 <= t.col_begin);
        REQUIRE(t.col_begin < t.col_end);
        REQUIRE(t.col_end <= cols);
        CHECK((t.col_begin * esz) % 8 == 0);
        CHECK((t.col_end == cols || (t.col_end * esz) % 8 == 0));
        CHECK(static_cast<uint64_t>((t.row_end - t.row_begin) * (t.col_end - t.col_begin) * esz) <=
              std::max<uint64_t>(rounded, cols * esz));
        // The words a tile digests, as the digest kernel derives them.
        const int64_t w0 = t.col_begin * esz / 8, w1 = t.col_end == cols ? row_words : t.col_end * esz / 8;
        for (int64_t r = t.row_begin; r < t.row_end; ++r) {
          for (int64_t c = t.col_begin; c < t.col_end; ++c) elem[r * cols + c]++;
          for (int64_t w = w0; w < w1; ++w) words[r * row_words + w]++;
        }
      }
      CHECK(std::all_of(elem.begin(), elem.end(), [](int k) { return k == 1; }));
      CHECK(std::all_of(words.begin(), words.end(), [](int k) { return k == 1; }));
    }
  }
}

}  // namespace
}  // namespace wsync::kernels
