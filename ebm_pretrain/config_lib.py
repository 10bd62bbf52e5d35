"""Kept for configs written before the recipes and the checks were split: the
recipes are ``ebm_pretrain.recipes``, the checks ``ebm_pretrain.validate``."""
from ebm_pretrain.recipes import *  # noqa: F401,F403
from ebm_pretrain.recipes import DEMO_MODELS, TINY_MODELS  # noqa: F401
from ebm_pretrain.errors import ConfigError  # noqa: F401
from ebm_pretrain.validate import validate  # noqa: F401
