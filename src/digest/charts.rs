//! The digest's charts, drawn with plotters' SVG backend into strings that the HTML template inlines.
//! No fonts are loaded: plotters' SVG backend writes `<text>` elements that the reader's browser or mail
//! client renders with its own sans-serif font.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{DigestError, ReasonRow, SeriesPoint};

/// Colour of hard bounces.
const HARD: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
/// Colour of soft failures.
const SOFT: RGBColor = RGBColor(0xe6, 0x9b, 0x22);
/// Colour of the reason bars.
const BAR: RGBColor = RGBColor(0x2c, 0x6e, 0xa8);
/// Colour of axes and labels.
const INK: RGBColor = RGBColor(0x44, 0x4b, 0x55);
/// Chart width in pixels (the page is 760 px wide).
const WIDTH: u32 = 720;

fn chart_error(chart: &'static str) -> impl Fn(DrawingAreaErrorKind<std::io::Error>) -> DigestError {
    move |source| DigestError::Chart { chart, source }
}

/// Hard and soft failures over the period, stacked (hard at the bottom). `None` when there were none.
pub fn timeline(series: &[SeriesPoint]) -> Result<Option<String>, DigestError> {
    let max = series.iter().map(|p| p.hard + p.soft).max().unwrap_or(0);
    if max == 0 {
        return Ok(None);
    }
    let e = chart_error("hard and soft failures over time");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let n = series.len();
        let y_max = max as f64 * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..(n.max(2) - 1) as f64, 0f64..y_max)
            .map_err(&e)?;
        let labels = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            series.get(i as usize).map(|p| short_bucket(&p.bucket)).unwrap_or_default()
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .axis_style(INK)
            .x_labels(n.min(8))
            .x_label_formatter(&labels)
            .y_labels(5)
            .y_label_formatter(&|y| format!("{}", y.round() as i64))
            .label_style(("sans-serif", 13).into_font().color(&INK))
            .draw()
            .map_err(&e)?;
        let total = series.iter().enumerate().map(|(i, p)| (i as f64, (p.hard + p.soft) as f64));
        chart
            .draw_series(AreaSeries::new(total, 0.0, SOFT.mix(0.85)).border_style(SOFT))
            .map_err(&e)?
            .label("soft")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], SOFT.filled()));
        let hard = series.iter().enumerate().map(|(i, p)| (i as f64, p.hard as f64));
        chart
            .draw_series(AreaSeries::new(hard, 0.0, HARD.mix(0.9)).border_style(HARD))
            .map_err(&e)?
            .label("hard")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], HARD.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(0xdd, 0xdd, 0xdd))
            .label_font(("sans-serif", 13).into_font().color(&INK))
            .draw()
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(Some(responsive(svg)))
}

/// Failures by reason, the `limit` most frequent, as horizontal bars. `None` when there were none.
pub fn reasons(rows: &[ReasonRow], limit: usize) -> Result<Option<String>, DigestError> {
    let rows: Vec<&ReasonRow> = rows.iter().filter(|r| r.trend.current > 0).take(limit).collect();
    let Some(max) = rows.iter().map(|r| r.trend.current).max() else {
        return Ok(None);
    };
    let e = chart_error("failures by reason");
    let height = 40 + 24 * rows.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let n = rows.len() as i32;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(130)
            .build_cartesian_2d(0i64..(max + max / 8 + 1), (0..n).into_segmented())
            .map_err(&e)?;
        let names = |v: &SegmentValue<i32>| match v {
            // Row 0 at the top: segment i shows rows[n - 1 - i].
            SegmentValue::CenterOf(i) => {
                usize::try_from(n - 1 - i).ok().and_then(|k| rows.get(k)).map(|r| r.reason.clone()).unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
            .bold_line_style(RGBColor(0xe2, 0xe2, 0xe2))
            .axis_style(INK)
            .y_labels(rows.len())
            .y_label_formatter(&names)
            .x_labels(6)
            .label_style(("sans-serif", 13).into_font().color(&INK))
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(k, r)| {
                let i = n - 1 - k as i32;
                let mut bar = Rectangle::new(
                    [(0, SegmentValue::Exact(i)), (r.trend.current, SegmentValue::Exact(i + 1))],
                    BAR.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(&e)?;
        chart
            .draw_series(rows.iter().enumerate().filter(|(_, r)| r.hard > 0).map(|(k, r)| {
                let i = n - 1 - k as i32;
                let mut bar =
                    Rectangle::new([(0, SegmentValue::Exact(i)), (r.hard, SegmentValue::Exact(i + 1))], HARD.filled());
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(Some(responsive(svg)))
}

/// A bucket label shortened for an axis: `12-01 07h`, `12-01`, `2026-12`.
fn short_bucket(bucket: &str) -> String {
    match bucket.len() {
        13 => format!("{} {}h", &bucket[5..10], &bucket[11..13]),
        10 => bucket[5..].to_string(),
        _ => bucket.to_string(),
    }
}

/// Let the SVG shrink with the page (mail clients on phones): keep the viewBox, make the width fluid.
fn responsive(svg: String) -> String {
    svg.replacen("<svg ", "<svg style=\"max-width:100%;height:auto\" role=\"img\" ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Trend;

    #[test]
    fn timeline_is_an_svg_with_both_series_and_none_without_data() {
        let series = vec![
            SeriesPoint { bucket: "2026-12-01 00".into(), hard: 3, soft: 5 },
            SeriesPoint { bucket: "2026-12-01 01".into(), hard: 0, soft: 2 },
            SeriesPoint { bucket: "2026-12-01 02".into(), hard: 7, soft: 0 },
        ];
        let svg = timeline(&series).unwrap().expect("a chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("hard") && svg.contains("soft"));
        assert!(svg.contains("12-01 01h"));
        let empty: Vec<SeriesPoint> =
            series.iter().map(|p| SeriesPoint { bucket: p.bucket.clone(), hard: 0, soft: 0 }).collect();
        assert_eq!(timeline(&empty).unwrap(), None);
    }

    #[test]
    fn reasons_chart_names_each_reason() {
        let row = |reason: &str, current, hard| ReasonRow {
            reason: reason.into(),
            trend: Trend::new(current, 0),
            hard,
            share: String::new(),
        };
        let rows = vec![row("userunknown", 40, 40), row("mailboxfull", 12, 0), row("blocked", 3, 0)];
        let svg = reasons(&rows, 10).unwrap().expect("a chart");
        for name in ["userunknown", "mailboxfull", "blocked"] {
            assert!(svg.contains(name), "{name} missing");
        }
        assert_eq!(reasons(&[], 10).unwrap(), None);
    }
}
