"""The ``umbra`` command line: parse arguments, call the library, render the result."""
