"""A per-column drift metric for Evidently reports that draws charts only for columns that drifted.

Evidently's ValueDrift renders two plotly figures per column whatever the verdict: ~75% of a 23-column
check's time (profiled) and most of the page, for columns nobody needs to look at. `ColumnValueDrift`
computes exactly ValueDrift's test (the same calculation, method and threshold) and keeps the charts for
drifted columns; a calm column gets one counter with its score.
"""

from __future__ import annotations

from typing import cast

from evidently.core.metric_types import SingleValueCalculation
from evidently.legacy.calculations.data_drift import ColumnDataDriftMetrics
from evidently.legacy.model.widget import BaseWidgetInfo
from evidently.legacy.renderers.html_widgets import CounterData, WidgetSize, counter
from evidently.metrics import ValueDrift
from evidently.metrics.column_statistics import ValueDriftCalculation


class ColumnValueDrift(ValueDrift):  # type: ignore[misc]
    """ValueDrift whose page shows charts only when the column drifted."""

    class Config:
        type_alias = "clreg:metric:ColumnValueDrift"


class ColumnValueDriftCalculation(SingleValueCalculation[ColumnValueDrift]):  # type: ignore[misc]
    """ValueDrift's own calculation (borrowed, not copied), with a cheaper widget for calm columns."""

    calculate = ValueDriftCalculation.calculate
    display_name = ValueDriftCalculation.display_name

    def _render(self, result: ColumnDataDriftMetrics, options: object, color_options: object) -> list[BaseWidgetInfo]:
        if result.drift_detected:
            return cast(list[BaseWidgetInfo], ValueDriftCalculation._render(self, result, options, color_options))
        score = CounterData.float(label=f"{result.stattest_name} (not drifted)", value=result.drift_score,
                                  precision=4)
        return [counter(title=f"Drift in column '{result.column_name}'", counters=[score], size=WidgetSize.HALF)]
