"""``python -m cloud_controller.cli``: the same entry point as the ``cloud-controller`` script."""

from cloud_controller.cli.main import main

raise SystemExit(main())
