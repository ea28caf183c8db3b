from s3pipefs.cli import main

raise SystemExit(main())
