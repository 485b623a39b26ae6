"""Audit and check results in other tools' formats, all from the one finding model.

One module per format (:mod:`.asff`, :mod:`.sarif`, :mod:`.csv_format`, :mod:`.json_format`);
:mod:`.safety` is the single place that decides what text may leave the tool, so that no format
can carry private key material or factors even if a detector's detail text ever held some.
Nothing here is imported by ``check`` unless ``--format sarif`` asks for it.
"""
