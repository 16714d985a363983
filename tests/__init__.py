# A regular package, not a namespace one: verl's wheel installs a top-level `tests` package into
# site-packages, which would otherwise shadow this folder for `from tests.helpers import ...`.
