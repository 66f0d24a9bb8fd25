"""Show-o2 model core: config, model, masks, losses, checkpoints."""
from .attention import flex_block_mask, mask_key_padding, omni_attention_mask
from .config import Showo2Config
from .losses import flow_loss, ntp_loss, tokens_to_velocity, velocity_to_tokens
from .showo2 import Showo2Model, Showo2Output

__all__ = ["Showo2Config", "Showo2Model", "Showo2Output", "omni_attention_mask", "flex_block_mask", "mask_key_padding",
           "velocity_to_tokens", "tokens_to_velocity", "ntp_loss", "flow_loss"]
