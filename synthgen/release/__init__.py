"""Releasing a synthetic dataset: a `synthgen sample` folder and its `synthgen eval` report,
checked by gates and packed with a generated card, metadata and checksums (`build`), in one of
three standard formats (`formats`), and re-checked by anyone who downloads it (`verify`)."""
