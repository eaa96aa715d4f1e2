"""Pictures of results: overlays of masks on volumes (:mod:`.overlay`) and 2D images (:mod:`.overlay2d`),
and the figure helpers they and the reports share (:mod:`.figures`). Used by ``cli``, ``eval`` and ``train``."""
