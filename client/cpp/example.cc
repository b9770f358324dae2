// A minimal wsync client: one process plays a trainer (a 4x8 fp32 weight,
// whole) and a generator (the same weight as bf16, split into two row
// shards), syncs version 1 and checks the result.
//
//   wsync_example --socket /run/wsync/wsyncd.sock
#include <cstdio>
#include <cstring>
#include <string>

#include "client/cpp/wsync_client.h"
#include "kernels/dtype.h"

using namespace wsync;

int main(int argc, char** argv) {
  client::ConnectOptions opts;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--socket") opts.socket = argv[i + 1];
  }
  auto c = client::Client::Attach(opts, "wsync-example");
  if (!c.ok()) return std::fprintf(stderr, "attach: %s\n", c.status().ToString().c_str()), 1;
  client::Client& cl = **c;

  v1::RegisterModelRequest model;
  model.set_model_id("example");
  auto* t = model.add_tensors();
  t->set_name("w");
  t->add_shape(4);
  t->add_shape(8);
  t->set_dtype(v1::FLOAT32);
  if (auto r = cl.RegisterModel(model); !r.ok()) return std::fprintf(stderr, "%s\n", r.status().ToString().c_str()), 1;

  // Source: the whole tensor in fp32, values 0..31.
  auto src = cl.Allocate(4 * 8 * 4);
  if (!src.ok()) return 1;
  float* w = static_cast<float*>(src->data);
  for (int i = 0; i < 32; ++i) w[i] = static_cast<float>(i) * 0.5f;
  v1::RegisterShardsRequest s;
  s.set_model_id("example");
  s.set_role(v1::SOURCE);
  auto* b = s.add_buffers();
  b->set_name("w");
  *b->mutable_memory() = src->Ref();
  b->add_shape(4);
  b->add_shape(8);
  b->set_dtype(v1::FLOAT32);
  auto* p = b->add_pieces();
  p->set_tensor("w");
  for (auto* box : {p->mutable_canonical(), p->mutable_shard()}) {
    box->add_offsets(0), box->add_offsets(0), box->add_sizes(4), box->add_sizes(8);
  }
  if (auto r = cl.RegisterShards(s); !r.ok()) return std::fprintf(stderr, "%s\n", r.status().ToString().c_str()), 1;

  // Target replica "gen": two bf16 shards of two rows each.
  client::ShmBuffer dst[2];
  for (int rank = 0; rank < 2; ++rank) {
    auto d = cl.Allocate(2 * 8 * 2);
    if (!d.ok()) return 1;
    dst[rank] = *d;
    v1::RegisterShardsRequest r;
    r.set_model_id("example");
    r.set_role(v1::TARGET);
    r.set_replica_id("gen");
    r.mutable_rank()->set_tp(rank);
    r.mutable_rank()->set_tp_size(2);
    auto* buf = r.add_buffers();
    buf->set_name("w_rows");
    *buf->mutable_memory() = d->Ref();
    buf->add_shape(2);
    buf->add_shape(8);
    buf->set_dtype(v1::BFLOAT16);
    auto* piece = buf->add_pieces();
    piece->set_tensor("w");
    piece->mutable_canonical()->add_offsets(2 * rank), piece->mutable_canonical()->add_offsets(0);
    piece->mutable_canonical()->add_sizes(2), piece->mutable_canonical()->add_sizes(8);
    piece->mutable_shard()->add_offsets(0), piece->mutable_shard()->add_offsets(0);
    piece->mutable_shard()->add_sizes(2), piece->mutable_shard()->add_sizes(8);
    if (auto res = cl.RegisterShards(r); !res.ok()) return std::fprintf(stderr, "%s\n", res.status().ToString().c_str()), 1;
  }

  v1::SyncRequest sync;
  sync.set_model_id("example");
  sync.set_version(1);
  auto result = cl.Sync(sync, [](const v1::ProgressUpdate& pr) {
    std::printf("progress: %s %llu/%llu bytes\n", v1::SyncPhase_Name(pr.phase()).c_str(),
                static_cast<unsigned long long>(pr.bytes_done()), static_cast<unsigned long long>(pr.bytes_total()));
  });
  if (!result.ok()) return std::fprintf(stderr, "sync: %s\n", result.status().ToString().c_str()), 1;
  auto v = cl.WaitVersion("example", "gen", 1, 1000);
  if (!v.ok()) return 1;
  int bad = 0;
  for (int rank = 0; rank < 2; ++rank) {
    const uint16_t* h = static_cast<const uint16_t*>(dst[rank].data);
    for (int i = 0; i < 16; ++i) bad += h[i] != kernels::F32ToBf16(w[rank * 16 + i]);
  }
  std::printf("version %llu committed, digest %s, %llu bytes; %s\n",
              static_cast<unsigned long long>(v->version()), v->digest().c_str(),
              static_cast<unsigned long long>(result->bytes()), bad ? "MISMATCH" : "all bytes match");
  return bad ? 1 : 0;
}
