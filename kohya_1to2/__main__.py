from kohya_1to2.cli import main

raise SystemExit(main())
