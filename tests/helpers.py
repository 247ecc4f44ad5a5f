"""Small helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""
from tools.engine import optim


def kill_at(monkeypatch, iteration):
    """Interrupt the next training run (as Ctrl-C would) when it checks the loss of `iteration`."""
    original = optim.check_finite

    def check(losses, it, ctx=None, **options):
        if it == iteration:
            raise KeyboardInterrupt
        return original(losses, it, ctx, **options)

    monkeypatch.setattr(optim, "check_finite", check)


def run_main(module, argv):
    """A script's main on parsed argv, as tests call it (cli adds only the exit status)."""
    return module.main(module.get_args_parser().parse_args(argv))
