// The fused causal GQA attention of the training forward (distill/attention_train.h) against the
// unfused ATen computation (matmul, causal mask, softmax, matmul; K/V heads repeated for GQA): the
// outputs and the gradients of q, k and v agree to float rounding for the AVX2 kernel (head_dim a
// multiple of 8) and the portable one (head_dim 4, or forced), at odd lengths that exercise the
// vector tails; and forward_train with the fused kernel gives the logits of the plain executor.
#include <ATen/ATen.h>
#undef CHECK  // c10's logging (glog) defines CHECK; the test's CHECK is Catch's
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "distill/attention_train.h"
#include "distill/reference.h"
#include "distill/reference_torch.h"
#include "support.h"

using namespace kerf;

namespace {

at::Tensor unfused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t H, int64_t G, int64_t dh, double scale) {
  const int64_t B = q.size(0), T = q.size(1);
  at::Tensor qh = q.view({B, T, H, dh}).transpose(1, 2);
  at::Tensor kh = k.view({B, T, G, dh}).transpose(1, 2).repeat_interleave(H / G, 1);
  at::Tensor vh = v.view({B, T, G, dh}).transpose(1, 2).repeat_interleave(H / G, 1);
  at::Tensor s = at::matmul(qh, kh.transpose(-1, -2)) * scale;
  s = s.masked_fill(at::ones({T, T}, at::kBool).triu(1), -std::numeric_limits<float>::infinity());
  return at::matmul(at::softmax(s, -1), vh).transpose(1, 2).reshape({B, T, H * dh});
}

double max_abs(const at::Tensor& a) { return a.abs().max().item<double>(); }

void check_case(int64_t B, int64_t T, int64_t H, int64_t G, int64_t dh, bool scalar) {
  INFO("B " << B << " T " << T << " H " << H << " G " << G << " dh " << dh << (scalar ? " scalar" : " auto"));
  at::manual_seed(1234 + T + dh);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  at::Tensor q0 = at::randn({B, T, H * dh}) * 1.5, k0 = at::randn({B, T, G * dh}) * 1.5, v0 = at::randn({B, T, G * dh});
  at::Tensor go = at::randn({B, T, H * dh});
  distill::force_scalar_attention(scalar);
  at::Tensor q1 = q0.clone().requires_grad_(true), k1 = k0.clone().requires_grad_(true), v1 = v0.clone().requires_grad_(true);
  at::Tensor o1 = distill::causal_gqa_attention(q1, k1, v1, H, G, dh, scale);
  o1.backward(go);
  const std::vector<at::Tensor> g1 = {q1.grad(), k1.grad(), v1.grad()};
  distill::force_scalar_attention(false);
  at::Tensor q2 = q0.clone().requires_grad_(true), k2 = k0.clone().requires_grad_(true), v2 = v0.clone().requires_grad_(true);
  at::Tensor o2 = unfused(q2, k2, v2, H, G, dh, scale);
  o2.backward(go);
  const std::vector<at::Tensor> g2 = {q2.grad(), k2.grad(), v2.grad()};
  CHECK(max_abs(o1 - o2) <= 2e-6 * std::max(1.0, max_abs(o2)));
  for (int i = 0; i < 3; ++i) {
    INFO("gradient " << "qkv"[i]);
    CHECK(max_abs(g1[i] - g2[i]) <= 5e-6 * std::max(1.0, max_abs(g2[i])));
  }
  // The reference gradients are not trivially zero (then a backward returning zeros would pass);
  // with one position the softmax is constant and dq is zero.
  if (T > 1) CHECK(max_abs(g2[0]) > 1e-2);
  CHECK(max_abs(g2[2]) > 1e-2);
}

}  // namespace

TEST_CASE("fused causal attention equals the unfused computation", "[attention]") {
  INFO("kernel on this machine: " << distill::causal_attention_kernel());
  check_case(2, 37, 6, 3, 8, false);   // stories260K's pruned shape; T not a multiple of 8
  check_case(1, 64, 8, 4, 8, false);
  check_case(2, 19, 4, 1, 16, false);  // MQA, two 8-lane chunks per head
  check_case(2, 23, 4, 2, 4, false);   // head_dim 4: the portable kernel
  check_case(2, 37, 6, 3, 8, true);    // the portable kernel forced
  check_case(1, 1, 2, 2, 8, false);    // a single position
}

TEST_CASE("fused causal attention rejects bad shapes", "[attention]") {
  at::Tensor q = at::randn({1, 5, 16}), k = at::randn({1, 5, 8});
  CHECK_THROWS(distill::causal_gqa_attention(q, k, k, 3, 2, 8, 0.3));        // H % G != 0 and widths
  CHECK_THROWS(distill::causal_gqa_attention(q, k, k.narrow(1, 0, 4), 2, 1, 8, 0.3));  // v shape
  CHECK_THROWS(distill::causal_gqa_attention(q.to(at::kDouble), k, k, 2, 1, 8, 0.3));  // dtype
}

TEST_CASE("forward_train with the fused attention gives the executor's logits", "[attention]") {
  auto ex = distill::ReferenceExecutor::create(test::lifted());
  REQUIRE(ex.ok());
  at::manual_seed(7);
  at::Tensor tokens = at::randint(3, 500, {2, 45}, at::kLong);
  tokens.select(1, 0).fill_(1);  // BOS
  auto plain = ex->forward_tokens(std::vector<int64_t>(tokens[1].data_ptr<int64_t>(), tokens[1].data_ptr<int64_t>() + 45));
  REQUIRE(plain.ok());
  auto trained = distill::forward_train(*ex, tokens, {});
  REQUIRE(trained.ok());
  const int64_t V = trained->size(2);
  REQUIRE(static_cast<int64_t>(plain->size()) == 45 * V);
  const at::Tensor ref = at::from_blob(plain->data(), {45, V}, at::kFloat);
  CHECK(max_abs(trained->select(0, 1).detach() - ref) <= 1e-4);
  CHECK(max_abs(ref) > 1.0);
}
