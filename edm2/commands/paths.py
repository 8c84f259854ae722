"""Click parameter types for output paths: checked when the command line is read, before any
compute, so a read-only or full destination is a one-line error instead of a traceback after
hours of work (edm2.io.atomic.check_output_file / check_output_dir)."""

import click

# Key in click's Context.meta under which the output paths of the command line are kept.
OUTPUTS_KEY = "edm2.outputs"


class _Output(click.ParamType):
    def __init__(self, what: str):
        self.what = what

    def convert(self, value, param, ctx):
        from edm2.errors import OutputError

        try:
            self.check(value)
        except OutputError as e:  # one line ("Error: cannot write ..."), not a usage message
            raise click.ClickException(str(e)) from None
        if ctx is not None:  # meta is shared by the whole command line: the CLI names these in write errors
            ctx.meta.setdefault(OUTPUTS_KEY, []).append(str(value))
        return value


class OutputFile(_Output):
    """A file the command will write (its folders are created as needed)."""

    name = "file"

    def check(self, value):
        from edm2.io.atomic import check_output_file

        check_output_file(value, self.what)


class OutputDir(_Output):
    """A folder the command will write into (created as needed)."""

    name = "folder"

    def check(self, value):
        from edm2.io.atomic import check_output_dir

        check_output_dir(value, self.what)


class OutputFileOrDir(_Output):
    """A .zip file or a folder (dataset destinations)."""

    name = "path"

    def check(self, value):
        from edm2.io.atomic import check_output_dir, check_output_file

        if str(value).lower().endswith(".zip"):
            check_output_file(value, self.what)
        else:
            check_output_dir(value, self.what)
