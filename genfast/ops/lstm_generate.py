"""Native sampling loop of an LSTM language model in one call: packing, public API, torch.library
op, dispatch. Registered as op "lstm_generate" (genfast.backends, `genfast info`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference genfast/ops/_lstm_generate_ref.py (a torch loop that carries the state; lm_forward,
the teacher-forced oracle; naive_generate, the full nn.LSTM over the whole prefix per step;
module_generate, the step-by-step loop over the torch modules), C++ CPU
csrc/cpu/lstm_generate.cpp, Triton kernels/lstm_generate.py, CUDA csrc/cuda/lstm_generate.cu.

## The network (sizes L layers, V tokens, H hidden; torch's gate order i, f, g, o)
tokens in [0, V). x = emb[token] (emb (V, E); one-hot input: emb = identity, E = V). Layer 0
reads x, layer l >= 1 reads h of layer l-1 (no projection, unidirectional, no dropout at
generation). Per layer l, with its state (h_l, c_l):
  G    = w_ih_l x_l + b_ih_l + w_hh_l h_l + b_hh_l                 (4H)
  i, f, g, o = sigmoid(G[0:H]), sigmoid(G[H:2H]), tanh(G[2H:3H]), sigmoid(G[3H:4H])
  c_l  = f * c_l + i * g;   h_l = o * tanh(c_l)
head: logits = w_out h_{L-1} + b_out (w_out (V, H), b_out (V)).

## Packed layout (one contiguous 1-D tensor of the model dtype; see pack_lstm)
[tab (V, 4H) = emb @ w_ih_0^T + b_ih_0 + b_hh_0]  layer 0's input side folded per token
[w_hh_0 (4H, H)], per layer l >= 1 [w_ih_l (4H, H), w_hh_l (4H, H), b_l (4H) = b_ih_l + b_hh_l],
[w_out (V, H), b_out (V)]; each row-major, absent biases packed as zeros.
meta: int64 CPU tensor [L, V, H]. Backends may re-layout internally (the C++ kernel packs the
weights into its GEMV tiles once per call).

## Generation: lstm_generate(weights, meta, tokens, h, c, start, offset, seed, inv_temperature,
## top_k, top_p) mutates tokens (B, N) int64, h and c (L, B, H) of the model dtype (contiguous)
(h, c) on entry is the state BEFORE consuming token 0 (zeros for a fresh stream). For
p = 1 .. N-1: token p-1 goes through the stack (updating every layer's state) -> logits; if
p >= start, token p is overwritten by the `sample` family's draw (genfast/ops/sample.py:
temperature, top_k, top_p; csrc/cpu/sample_row.h) from those logits as row
r = (offset + p) * B + b of the Philox stream of `seed`; else the given token p is kept (it
must be in [0, V)). Tokens p < start are read; token N-1 is never fed. 1 <= start <= N
(start = N: only the state advances); offset >= 0 is the position of token 0 in the whole
stream. On return (h, c) is the state before consuming token N-1, so a continuation call
passes tokens[:, N-1:] as its tokens (start 1), the returned state and offset + N - 1, and
draws exactly what one long call would have drawn. Exactness: the teacher-forced module
forward on tokens[:, :N-1] from the entry state, then genfast.sample_categorical with rows
ordered (position, stream) (rows (offset + p) * B + b, p = 1 .. N-1; offset 0: rows B .. N*B-1
of a draw over all N*B rows) and the same seed gives the same tokens at p >= start.
float64 runs in float64; every other dtype computes in float32 (state and gate math). Streams
are independent: the result does not depend on how a backend splits them (threads, blocks).
Native signature (C++; the CUDA copy adds `void* stream` and returns a cudaError_t code):
  lstm_generate(weights, meta, meta_len, tokens, h, c, B, N, start, offset, seed,
                inv_temperature, top_k, top_p, dtype, num_threads)
Triton: genfast.kernels.lstm_generate.generate(weights, meta (list of int), tokens, h, c, start,
offset, seed (1-element int64 tensor), inv_temperature, top_k, top_p), in place.
inv_temperature = +inf is greedy; top_k = 0 and top_p = 1.0 disable the filters.

## Public API: lstm_generate(pack, prime (B, Tp) int64, n, *, state, temperature, top_k, top_p,
## seed, offset, backend) -> (tokens (B, Tp + n), (h, c))
tokens = [prime, n drawn tokens] (start = Tp, Tp >= 1); the returned state is the one before
consuming the last token, so lstm_generate(pack, tokens[:, -1:], m, state=state,
offset=offset + Tp + n - 1, seed=same) continues the stream exactly.
"""
