"""The command line: `gpumux serve|validate|schema|status|switch|simulate`.

Owns: arguments, exit codes and output. Does not: hold logic any other entry point needs.
"""
