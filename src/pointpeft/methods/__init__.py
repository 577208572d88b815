"""The PEFT methods besides DAPT, each a config (and where it needs them, layers) in its own folder, built on
the one wrapped backbone of :mod:`pointpeft.dapt` (see :mod:`pointpeft.methods.plan`)."""
