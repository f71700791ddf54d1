"""Two-stage distillation (DESIGN.md section 9): losses apart from the trainers that use them.

A student is read back by :func:`streamchar.loaders.load_teacher` and :func:`streamchar.loaders.read_distilled`.
"""
