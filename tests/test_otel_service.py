"""The default service name: two programs never share one, and the exported resource carries it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maeltrace.otel._otlp_json import read_json_lines
from maeltrace.otel._resource import resource
from maeltrace.otel._service import (
    GENERIC_SCRIPT_NAMES,
    INTERACTIVE_SERVICE_NAME,
    NOTEBOOK_SERVICE_NAME,
    program_service_name,
    service_name_of,
)

_TIMER_SCRIPT = """\
import maeltrace

with maeltrace.Timer(export=True) as tmr, tmr.region("epoch"):
    pass
"""


def _script(folder: Path, name: str, text: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _run(args: list[str], cwd: Path, output_dir: Path) -> None:
    """Runs ``python args`` with no OTEL_* variable, so the default name is the one chosen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["MAELTRACE_OUTPUT_DIR"] = str(output_dir)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parents[1]), str(cwd), env.get("PYTHONPATH", "")]
    )
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, timeout=120)


def _exported_services(output_dir: Path) -> set[str]:
    """The ``service.name`` of every resource in the run folder's embedded OTLP file."""
    (traces,) = output_dir.glob("*/traces.otlp.jsonl")
    return {
        attribute.value.string_value
        for data in read_json_lines(traces)
        for rs in data.resource_spans
        for attribute in rs.resource.attributes
        if attribute.key == "service.name"
    }


class TestScripts:
    def test_a_distinctive_file_name_is_the_service(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "weather", "prepare_weather.py")
        assert service_name_of(str(path)) == "prepare_weather"

    def test_two_generic_scripts_in_different_folders_get_different_services(
        self, tmp_path: Path
    ) -> None:
        torch_main = _script(tmp_path / "mnist_torch", "main.py")
        flax_main = _script(tmp_path / "mnist_flax", "main.py")
        assert service_name_of(str(torch_main)) == "mnist_torch-main"
        assert service_name_of(str(flax_main)) == "mnist_flax-main"

    @pytest.mark.parametrize("name", ["train.py", "run.py", "app.py", "script.py", "Training.py"])
    def test_every_generic_name_gets_its_folder(self, tmp_path: Path, name: str) -> None:
        path = _script(tmp_path / "weather", name)
        assert service_name_of(str(path)) == f"weather-{Path(name).stem}"

    def test_two_generic_scripts_of_one_folder_stay_apart(self, tmp_path: Path) -> None:
        train = _script(tmp_path / "weather", "train.py")
        evaluate = _script(tmp_path / "weather", "eval.py")
        assert service_name_of(str(train)) != service_name_of(str(evaluate))

    def test_a_generic_folder_brings_the_one_above(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "weather" / "src", "main.py")
        assert service_name_of(str(path)) == "weather-src-main"

    def test_generic_folders_are_followed_three_deep_at_most(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "src" / "scripts" / "bin", "run.py")
        assert service_name_of(str(path)) == "src-scripts-bin-run"

    def test_a_script_at_the_root_keeps_its_own_name(self) -> None:
        assert service_name_of("/main.py") == "main"

    def test_a_relative_path_is_named_from_the_working_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _script(tmp_path / "ocean", "train.py")
        monkeypatch.chdir(tmp_path / "ocean")
        assert service_name_of("train.py") == "ocean-train"

    def test_the_absolute_main_file_wins_over_argv0(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "ocean", "train.py")
        assert service_name_of("train.py", main_file=str(path)) == "ocean-train"

    def test_a_package_or_zip_app_run_as_a_whole_is_its_own_name(self, tmp_path: Path) -> None:
        main = _script(tmp_path / "forecast", "__main__.py")
        assert service_name_of(str(tmp_path / "forecast"), str(main), "__main__") == "forecast"
        assert service_name_of("app.pyz", "/jobs/forecast.pyz/__main__.py", "__main__") == (
            "forecast"
        )

    def test_the_list_of_generic_names_is_lower_case(self) -> None:
        assert {"main", "train", "run", "__main__", "app", "script", "training"} <= (
            GENERIC_SCRIPT_NAMES
        )
        assert all(name == name.lower() for name in GENERIC_SCRIPT_NAMES)


class TestModules:
    def test_python_m_gives_the_dotted_name(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "weather" / "jobs", "train.py")
        assert service_name_of(str(path), str(path), "weather.jobs.train") == "weather.jobs.train"

    def test_a_package_run_with_python_m_is_the_package(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "weather", "__main__.py")
        assert service_name_of(str(path), str(path), "weather.__main__") == "weather"

    def test_a_generic_top_level_module_is_named_like_a_script(self, tmp_path: Path) -> None:
        path = _script(tmp_path / "ocean", "train.py")
        assert service_name_of(str(path), str(path), "train") == "ocean-train"


class TestInteractive:
    @pytest.mark.parametrize("argv0", ["", "-", "-c", "/usr/local/bin/ipython"])
    def test_interactive_sessions_share_one_documented_name(self, argv0: str) -> None:
        assert service_name_of(argv0) == INTERACTIVE_SERVICE_NAME == "python-interactive"

    def test_a_notebook_kernel_is_jupyter(self) -> None:
        launcher = "/opt/venv/lib/python3.11/site-packages/ipykernel_launcher.py"
        assert service_name_of(launcher) == NOTEBOOK_SERVICE_NAME == "jupyter"
        assert service_name_of(launcher, launcher, "ipykernel_launcher") == "jupyter"
        assert service_name_of("", None, "colab_kernel_launcher") == "jupyter"


class TestResource:
    def test_the_standard_variables_come_before_the_program(self) -> None:
        assert resource("r", environ={"OTEL_SERVICE_NAME": "mine"})["service.name"] == "mine"
        by_attributes = resource("r", environ={"OTEL_RESOURCE_ATTRIBUTES": "service.name=ours"})
        assert by_attributes["service.name"] == "ours"

    def test_without_them_the_program_names_the_service(self) -> None:
        assert resource("r", environ={})["service.name"] == program_service_name()

    def test_a_timer_in_a_generic_script_exports_its_folder_name(self, tmp_path: Path) -> None:
        script = _script(tmp_path / "mnist_flax", "main.py", _TIMER_SCRIPT)
        _run([str(script)], cwd=tmp_path, output_dir=tmp_path / "out")
        assert _exported_services(tmp_path / "out") == {"mnist_flax-main"}

    def test_a_timer_in_a_module_run_with_python_m_exports_its_dotted_name(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "weather").mkdir()
        (tmp_path / "weather" / "__init__.py").write_text("")
        _script(tmp_path / "weather", "main.py", _TIMER_SCRIPT)
        _run(["-m", "weather.main"], cwd=tmp_path, output_dir=tmp_path / "out")
        assert _exported_services(tmp_path / "out") == {"weather.main"}
