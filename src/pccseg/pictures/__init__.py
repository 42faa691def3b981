"""Pictures: :mod:`.show` draws every stage of one image (:func:`~pccseg.pictures.show.stage_figure`;
:mod:`.fuse_figure` the fuse labeller's; :mod:`.stages` saves the one for any result);
:mod:`.report` writes a dataset or a training run as an HTML page
(:func:`~pccseg.pictures.report.make_report`)."""
