"""`python -m app <overrides>`: run one experiment, or a sweep with `--multirun`."""
from app.main import main

if __name__ == "__main__":
    main()
