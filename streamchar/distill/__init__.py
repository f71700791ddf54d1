"""Two-stage distillation (DESIGN.md section 9): losses apart from the trainers that use them."""
