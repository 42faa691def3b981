"""Pictures: :mod:`.show` draws every stage of one image (:func:`~pccseg.pictures.show.stage_figure`;
:mod:`.fuse_figure` the fuse labeller's; :mod:`.stages` saves the one for any result; :mod:`.rgb` turns
masks and maps into RGB arrays);
:mod:`.report` writes a dataset, a training run or an experiment as an HTML page
(:func:`~pccseg.pictures.report.make_report`; one module per report: :mod:`.dataset_report`,
:mod:`.training_report`, :mod:`.results_report`, sharing :mod:`.page`)."""
