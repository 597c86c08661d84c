"""Generated from proto/lrctl/v1 by scripts/gen_protos.py. Do not edit."""
