"""napari plugin of phaseedge (npe2 manifest ``napari.yaml`` beside this file).

Nothing is imported here: napari loads each contribution by the ``python_name`` in the
manifest, and ``import phaseedge`` never imports this subpackage, so the runtime needs
neither napari nor Qt. Install with ``pip install "phaseedge[napari]"``.
"""
