"""Adapters from where people train to the core monitor (:func:`gradsight.watch`).

Each module is a thin layer over :class:`gradsight.Monitor` and imports its
framework only when used, so ``import gradsight`` never needs them:

=======================  ==========================================  ===========================
module                   what                                        install
=======================  ==========================================  ===========================
``lightning``            ``GradFlowCallback`` for ``lightning.pytorch``  ``gradsight[lightning]``
``huggingface``          ``GradFlowCallback`` for ``transformers.Trainer``  ``gradsight[huggingface]``
``tensorboard``          event files from a run, or live while training  ``gradsight[tensorboard]``
``distributed``          DDP and FSDP2: rank 0 records the global batch  (torch)
=======================  ==========================================  ===========================

See docs/integrations.md.
"""
