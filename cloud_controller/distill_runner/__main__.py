"""``python -m cloud_controller.distill_runner``: run one DistillationJob (see :mod:`.job`)."""

from cloud_controller.distill_runner.job import main

raise SystemExit(main())
