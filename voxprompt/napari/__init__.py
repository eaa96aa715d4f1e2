"""The napari plugin (``pip install voxprompt[napari]``; docs/napari.md).

* :mod:`.widget`: the dock widget, one :class:`~voxprompt.session.Session` on a napari Image layer
  (model choice, positive/negative point and box layers, objects as a Labels layer, undo, lock, save);
* :mod:`.reader`: NIfTI, NRRD and MetaImage volumes with their spacing and geometry;
* :mod:`.layers`: layer data <-> session prompts, without Qt.

napari finds them through ``napari.yaml`` (npe2 manifest, entry point ``napari.manifest``). Importing
this package imports neither napari nor Qt.
"""
