"""The error tree: every class has its own documented exit code."""

from __future__ import annotations

from cryophile import errors


def all_subclasses(cls: type[errors.CryophileError]) -> list[type[errors.CryophileError]]:
    found: list[type[errors.CryophileError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(all_subclasses(sub))
    return found


def test_exit_codes_are_unique_and_documented() -> None:
    classes: list[type[errors.CryophileError]] = [errors.CryophileError,
                                                  *all_subclasses(errors.CryophileError)]
    direct = [cls for cls in classes if "exit_code" in vars(cls)]
    codes = [cls.exit_code for cls in direct]
    assert len(codes) == len(set(codes)), {cls.__name__: cls.exit_code for cls in direct}
    doc = errors.__doc__ or ""
    for cls in direct:
        assert f" {int(cls.exit_code)}   {cls.__name__}" in doc, cls.__name__


def test_only_try_later_is_transient_by_default() -> None:
    assert errors.TryLaterError.transient
    assert not errors.DataError.transient
    assert not errors.UsageError.transient


def test_partial_is_documented_and_no_class_uses_it() -> None:
    assert int(errors.ExitCode.PARTIAL) == 3
    assert "  3   (partial)" in (errors.__doc__ or "")
    classes: list[type[errors.CryophileError]] = [
        errors.CryophileError,
        *all_subclasses(errors.CryophileError),
    ]
    assert all(cls.exit_code != errors.ExitCode.PARTIAL for cls in classes)


def test_a_transient_error_exits_75_whatever_its_class() -> None:
    unavailable = errors.VaultUnavailableError("500")
    assert unavailable.exit_code == errors.ExitCode.UNAVAILABLE  # the class's own code
    assert errors.exit_code_of([unavailable]) == errors.ExitCode.TEMPFAIL
    assert errors.exit_code_of([]) == errors.ExitCode.OK
    refused = errors.ServiceError("access denied")
    assert errors.exit_code_of([unavailable, refused]) == errors.ExitCode.UNAVAILABLE
    assert errors.exit_code_of([errors.ConfigError("x"), refused]) == errors.ExitCode.CONFIG
