"""The functional op families, one module per op stem. Importing this registers their
torch.library ops; the public functions are re-exported at the top level (genfast.*), not here,
so that ``genfast.ops.gradient_penalty`` stays the module and never shadows it with a function."""

from . import (
    attention,
    attention2d,
    attention_generate,
    causal_conv,
    causal_conv_generate,
    causal_conv_layer,
    gradient_penalty,
    gumbel,
    lstm,
    lstm_generate,
    masked_conv,
    masked_conv_generate,
    masked_conv_layer,
    sample,
    spectral_norm,
)

__all__ = ["attention", "attention2d", "attention_generate", "causal_conv",
           "causal_conv_generate", "causal_conv_layer", "gradient_penalty",
           "gumbel", "lstm", "lstm_generate", "masked_conv", "masked_conv_generate",
           "masked_conv_layer", "sample", "spectral_norm"]
