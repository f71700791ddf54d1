"""``streamchar recipe tiny``: the reference model from corpus to distilled student, one resumable pipeline.

A recipe file (``configs/recipes/tiny.yaml``, read by :mod:`streamchar.recipe.spec`) names the folders and each
stage's budget; the stages run in order (:mod:`streamchar.recipe.run`)::

    corpus -> vae -> latents -> prior-audio -> prior-video -> prior-video-tune -> prior-video-long -> teacher
           -> orchestrator -> instruments -> stage1-{2,1,4}step -> stage2-2step -> ship (the model folder)
           -> results (short and long protocols)

Each stage is skipped when its output is present and valid (a finished run, a complete cache) and what it
was built from is unchanged: when a stage finishes, the recipe records a digest of each stage it read
(``INPUTS``) and of its own settings, and a stage whose inputs have changed since (a retrained prior, a
re-encoded cache) is stale: its old output is moved aside (``NAME.stale``) and it runs again, and so does
everything after it that read it. ``ship`` (:mod:`streamchar.recipe.ship`: the model folder and its cards) and
``results`` (:mod:`streamchar.recipe.results`) check the digests of what they were made from the same way. The
training stages resume from their own checkpoints, so an interrupted recipe picks up where it stopped.
Every stage uses a GPU when there is one and the CPU otherwise. ``RUNS/recipe-NAME.json`` records how
long each stage took and on what device; the recipe prints the table and the total at the end.
"""
