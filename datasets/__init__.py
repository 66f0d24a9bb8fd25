"""Show-o2 data package: tokenizer, sequence layout, loaders, transforms, mixed loader.

NOTE: this top-level package is called ``datasets`` and therefore *shadows* the Hugging Face
``datasets`` library whenever code runs from the repository root (the root is first on
``sys.path``). Nothing in this project may import the Hugging Face ``datasets`` library; every
``import datasets`` / ``from datasets import ...`` refers to this package.

Modules (import them directly, this file deliberately imports nothing heavy):

* ``datasets.tokenizer``   -- Qwen2.5 tokenizer + Show-o2 special tokens, demo tokenizer builder
* ``datasets.sequence``    -- THE sequence layout (training and inference), ``collate``
* ``datasets.transforms``  -- image preprocessing, bad-sample accounting
* ``datasets.base``        -- robust dataset base, annotation readers, latent-cache adapter, ``collate_samples``
* ``datasets.image_text``, ``datasets.instruct``, ``datasets.video_text``,
  ``datasets.interleaved``, ``datasets.webdataset`` -- loaders
* ``datasets.mixed``       -- seeded, resumable mixed generation/understanding loader
* ``datasets.shapes`` (evaluation engineer), ``datasets.latent_cache`` (VAE engineer)
"""
