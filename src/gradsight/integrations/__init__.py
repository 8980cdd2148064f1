"""Adapters from where people train to the core monitor (:func:`gradsight.watch`).

Each module is a thin layer over :class:`gradsight.Monitor` and imports its
framework only when used, so ``import gradsight`` never needs them:

=======================  ==========================================  ===========================
module                   what                                        install
=======================  ==========================================  ===========================
``lightning``            ``GradFlowCallback`` for ``lightning.pytorch``  ``gradsight[lightning]``
``huggingface``          ``GradFlowCallback`` for ``transformers.Trainer``  ``gradsight[huggingface]``
``tensorboard``          event files from a run, or live while training  ``gradsight[tensorboard]``
=======================  ==========================================  ===========================

Distributed training (DDP, FSDP2) is part of the core monitor
(:mod:`gradsight.instrument.distributed`). See docs/integrations.md.
"""
