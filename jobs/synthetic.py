"""Realistic synthetic interaction logs for the demo, the tests and the benchmarks.

One row = one impression of an item shown to a user, with a click label. Hive-partitioned by
ds=YYYY-MM-DD, several Parquet shards per day. A planted signal (user-category affinity, item
quality, position, price, discount, device) drives the click, so a trained model can find it.
Nulls, NaN and skew are sprinkled in as in real logs. Deterministic for a given seed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.features import CategoricalFeature, DenseFeature, FeatureSpec
from pipeline.storage import Location

N_CATEGORIES = 40


DEVICES = np.array(["ios", "android", "web", "tv"])


COUNTRIES = np.array(["us", "de", "fr", "br", "in", "jp", "gb", "mx", "es", "it", "ca", "au"])


CHANNELS = np.array(["home", "search", "email", "push", "related"])


KEY_COLUMNS = ["event_id", "user_id", "item_id"]


LABEL = "clicked"


# The two towers of preset `two-tower`: which demo features describe the user, which the item
# (the context features, channel, hour and position, are in neither).
USER_FEATURES = [
    "user_id",
    "device",
    "country",
    "user_clicks_7d",
    "user_impressions_7d",
    "days_since_last_visit",
]
ITEM_FEATURES = ["item_id", "category", "brand", "price", "discount_pct", "item_ctr_7d", "item_rating"]


# The demo model's features. Statistics (mean/std) are fitted at training time.
FEATURES = FeatureSpec(
    categorical=[
        CategoricalFeature("user_id", 200_003),
        CategoricalFeature("item_id", 100_003),
        CategoricalFeature("category", 64),
        CategoricalFeature("brand", 1_024),
        CategoricalFeature("device", 8),
        CategoricalFeature("country", 32),
        CategoricalFeature("channel", 8),
        CategoricalFeature("hour", 24),
    ],
    dense=[
        DenseFeature("price", log1p=True, clip_min=0.0),
        DenseFeature("discount_pct", clip_min=0.0, clip_max=90.0),
        DenseFeature("position", log1p=True),
        DenseFeature("item_ctr_7d", fill=0.02, clip_min=0.0, clip_max=1.0),
        DenseFeature("user_clicks_7d", log1p=True),
        DenseFeature("user_impressions_7d", log1p=True),
        DenseFeature("item_rating", fill=3.5, clip_min=0.0, clip_max=5.0),
        DenseFeature("days_since_last_visit", log1p=True, clip_max=365.0),
    ],
)


@dataclass
class SyntheticSpec:
    rows_per_day: int = 50_000
    shards_per_day: int = 4
    n_users: int = 100_000
    n_items: int = 50_000
    seed: int = 7
    null_fraction: float = 0.02


def _item_quality(item_id: np.ndarray, seed: int) -> np.ndarray:
    # A fixed per-item effect derived from the id (no lookup table to keep in memory).
    x = (item_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)) >> np.uint64(40)
    return (x.astype(np.float64) / float(1 << 24)) * 2.0 - 1.0


def generate_day(date: str, spec: SyntheticSpec) -> pa.Table:
    day = dt.date.fromisoformat(date).toordinal()
    rng = np.random.default_rng([spec.seed, day])
    n = spec.rows_per_day
    user = (rng.zipf(1.3, n) % spec.n_users).astype(np.int64) + 1
    item = (rng.zipf(1.2, n) % spec.n_items).astype(np.int64) + 1
    category = item % N_CATEGORIES
    favorite = user % N_CATEGORIES
    brand = (item // 7) % 900
    device_idx = rng.choice(len(DEVICES), n, p=[0.35, 0.4, 0.2, 0.05])
    country_idx = (user % len(COUNTRIES) + (rng.random(n) < 0.05)) % len(COUNTRIES)
    channel_idx = rng.choice(len(CHANNELS), n, p=[0.5, 0.25, 0.1, 0.05, 0.1])
    hour = rng.integers(0, 24, n)
    price = np.round(np.exp(rng.normal(3.0, 1.0, n)), 2)
    discount = np.where(rng.random(n) < 0.3, rng.integers(5, 60, n), 0).astype(np.float64)
    position = rng.integers(1, 50, n).astype(np.int64)
    quality = _item_quality(item, spec.seed)
    item_ctr = np.clip(0.03 + 0.02 * quality + rng.normal(0, 0.005, n), 0, 1)
    user_impr = rng.poisson(40, n).astype(np.float64)
    user_clicks = rng.binomial(user_impr.astype(np.int64), 0.05).astype(np.float64)
    rating = np.clip(3.5 + quality + rng.normal(0, 0.3, n), 0, 5)
    days_since = rng.exponential(5.0, n)

    item_side = (category == favorite, quality, position, price, discount)
    logit = _click_logit(*item_side, device_idx, channel_idx, user_clicks, user_impr)
    clicked = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    def with_nulls(values: np.ndarray, frac: float) -> pa.Array:
        mask = rng.random(n) < frac
        return pa.array(values, mask=mask)

    nan_rating = np.where(rng.random(n) < 0.01, np.nan, rating)  # NaN, not null: real logs have both
    event_ids = pa.array(np.char.add(f"{date}-", np.arange(n).astype(str)))
    return pa.table(
        {
            "event_id": event_ids,
            "user_id": pa.array(user),
            "item_id": pa.array(item),
            "category": pa.array(np.char.add("cat_", category.astype(str))),
            "brand": with_nulls(np.char.add("b", brand.astype(str)), spec.null_fraction),
            "device": pa.array(DEVICES[device_idx]),
            "country": pa.array(COUNTRIES[country_idx]),
            "channel": pa.array(CHANNELS[channel_idx]),
            "hour": pa.array(hour.astype(np.int32)),
            "price": with_nulls(price, spec.null_fraction),
            "discount_pct": pa.array(discount),
            "position": pa.array(position),
            "item_ctr_7d": with_nulls(item_ctr, spec.null_fraction),
            "user_clicks_7d": pa.array(user_clicks),
            "user_impressions_7d": pa.array(user_impr),
            "item_rating": pa.array(nan_rating),
            "days_since_last_visit": with_nulls(days_since, spec.null_fraction),
            LABEL: pa.array(clicked),
        }
    )


def _click_logit(same_category, quality, position, price, discount, device_idx, channel_idx, clicks, impr):
    """The ground truth the demo model learns: the click log-odds of each row."""
    return (
        -2.2
        + 1.6 * same_category
        + 1.2 * quality
        - 0.5 * np.log1p(position)
        - 0.25 * (np.log1p(price) - 3.0)
        + 0.02 * discount
        + 0.3 * (DEVICES[device_idx] == "ios")
        + 0.4 * (CHANNELS[channel_idx] == "search")
        + 4.0 * (clicks / np.maximum(impr, 1) - 0.05)
    )


def head_labels(table: pa.Table) -> dict[str, np.ndarray]:
    """The labels of preset `heads`: p_click (the click) and p_convert (a click on a discounted
    item, standing in for a conversion, which the logs do not record)."""
    clicked = table.column(LABEL).to_numpy(zero_copy_only=False).astype(bool)
    discounted = table.column("discount_pct").to_numpy(zero_copy_only=False) > 0
    return {"p_click": clicked, "p_convert": clicked & discounted}


def tower_features(spec: FeatureSpec) -> dict[str, list[int]]:
    """The two-tower's constructor arguments: indices of each tower's features in (cat, dense)."""
    cat = [f.name for f in spec.categorical]
    dense = [f.name for f in spec.dense]
    return {
        "user_cat": [i for i, n in enumerate(cat) if n in USER_FEATURES],
        "user_dense": [i for i, n in enumerate(dense) if n in USER_FEATURES],
        "item_cat": [i for i, n in enumerate(cat) if n in ITEM_FEATURES],
        "item_dense": [i for i, n in enumerate(dense) if n in ITEM_FEATURES],
    }


def date_range(start: str, days: int) -> list[str]:
    d0 = dt.date.fromisoformat(start)
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(days)]


def write_days(root: Location, dates: list[str], spec: SyntheticSpec) -> dict[str, int]:
    """Write each date as `shards_per_day` Parquet files under root/ds=DATE/. Returns rows per date."""
    counts = {}
    for d in dates:
        table = generate_day(d, spec)
        part = root.join(f"ds={d}")
        part.fs.create_dir(part.path, recursive=True)
        bounds = np.linspace(0, table.num_rows, spec.shards_per_day + 1).astype(int)
        for i in range(spec.shards_per_day):
            shard = table.slice(bounds[i], bounds[i + 1] - bounds[i])
            with part.fs.open_output_stream(part.join(f"part-{i:05d}.parquet").path) as f:
                pq.write_table(shard, f, compression="zstd")
        counts[d] = table.num_rows
    return counts
