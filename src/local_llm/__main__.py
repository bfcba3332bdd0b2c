from local_llm.cli import main

raise SystemExit(main())
