"""A user's own model package for the tests: imported only through ``--model ddsd_test_models.nets:tiny_fcn``.

``tests/plugins`` is put on ``sys.path`` and ``PYTHONPATH`` by the tests that use it (``tests/user_models.py``), the
way a user makes their own code importable.
"""
