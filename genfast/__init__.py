"""genfast: fast C++/CUDA and Triton kernels for generative models, under drop-in torch.nn layers.

Importing genfast touches no GPU, no Triton driver and no compiled extension: backends are
probed on first use (genfast.backends), so it imports on a CPU-only box without a compiler.
"""

from . import backends, nn, ops
from ._info import info
from .backends import BackendError, use_backend
from .ops.attention import attention
from .ops.attention2d import attention2d
from .ops.attention_generate import attention_generate, pack_gpt
from .ops.causal_conv import causal_conv1d, causal_conv1d_update
from .ops.causal_conv_generate import pack_wavenet, wavenet_generate
from .ops.causal_conv_layer import wavenet_layer
from .ops.gradient_penalty import GradientPenalty, gradient_penalty, per_sample_grad_norm
from .ops.gumbel import gumbel_softmax
from .ops.lstm import lstm, lstm_cell, lstm_layer
from .ops.lstm_generate import lstm_generate, pack_lstm
from .ops.masked_conv import masked_conv2d
from .ops.masked_conv_generate import pack_pixelcnn, pixelcnn_generate
from .ops.masked_conv_layer import gated_pixelcnn_layer
from .ops.sample import sample_categorical

__version__ = "0.1.0"
__all__ = ["BackendError", "GradientPenalty", "attention", "attention2d", "attention_generate",
           "backends",
           "causal_conv1d",
           "causal_conv1d_update", "gated_pixelcnn_layer", "gradient_penalty", "gumbel_softmax",
           "info", "lstm", "lstm_cell", "lstm_generate", "lstm_layer", "masked_conv2d", "nn", "ops",
           "pack_gpt", "pack_lstm", "pack_pixelcnn", "pack_wavenet",
           "per_sample_grad_norm", "pixelcnn_generate",
           "sample_categorical", "use_backend", "wavenet_generate", "wavenet_layer"]
