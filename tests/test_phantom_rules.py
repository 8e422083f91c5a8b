"""The phantom generators obey their documented rules, measured from the arrays they return."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from synthgen.data.phantoms import brain3d, chest2d, reports

ALL_FINDINGS = {"nodule": 1.0, "effusion": 1.0}
NO_FINDINGS = {"nodule": 0.0, "effusion": 0.0}


def chest_cases(n: int, seed: int, **opts: object) -> list[chest2d.ChestCase]:
    options = chest2d.ChestOptions(**opts)
    return [chest2d.draw_case(np.random.default_rng([seed, i]), options) for i in range(n)]


def chest_samples(n: int, seed: int, **opts: object) -> list:
    options = chest2d.ChestOptions(**opts)
    return [chest2d.sample(np.random.default_rng([seed, i]), options) for i in range(n)]


def brain_samples(n: int, seed: int, **opts: object) -> list:
    options = brain3d.BrainOptions(**opts)
    return [brain3d.sample(np.random.default_rng([seed, i]), options) for i in range(n)]


def within_sds(successes: int, n: int, p: float, sds: float = 4.0) -> bool:
    """Binomial count within `sds` standard deviations of its expectation."""
    return abs(successes - n * p) <= sds * np.sqrt(n * p * (1.0 - p))


def reported_side(report: str, pattern: str) -> str:
    match = re.search(pattern, report)
    assert match, f"{pattern!r} not in {report!r}"
    return match.group(1)


def claims(case: chest2d.ChestCase) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """What the case's report asserts: finding -> (side, size class) present, and the findings
    it says are absent; the report text is exactly its sentences."""
    sentences = chest2d.report_sentences(case)
    assert chest2d.render(case).row["report"] == " ".join(s.text for s in sentences)
    present = {s.present[0]: s.present[1:] for s in sentences if s.present}
    absent = {a for s in sentences for a in s.absent}
    return present, absent


@pytest.mark.parametrize("size", [32, 64])
def test_chest_finding_masks_are_exactly_where_the_image_changed(size: int) -> None:
    for case in chest_cases(40, 1, size=size, prevalence=ALL_FINDINGS):
        full = chest2d.render(case)
        for finding, mask in [("nodule", "nodule_mask"), ("effusion", "effusion_mask")]:
            without = chest2d.render(dataclasses.replace(case, **{finding: None}))
            changed = full.clean != without.clean
            assert full.masks[mask].any(), (finding, case)
            np.testing.assert_array_equal(changed, full.masks[mask].astype(bool))
            assert not without.masks[mask].any()


def test_chest_negatives_have_empty_finding_masks_and_reports_that_say_so() -> None:
    for case in chest_cases(30, 2, prevalence=NO_FINDINGS):
        phantom = chest2d.render(case)
        assert phantom.row["nodule"] == 0 and phantom.row["effusion"] == 0
        assert phantom.row["nodule_side"] == phantom.row["effusion_side"] == ""
        present, absent = claims(case)
        assert not present and {"nodule", "effusion"} <= absent, phantom.row["report"]
        for mask in ("nodule_mask", "effusion_mask"):
            assert phantom.masks[mask].shape == phantom.image.shape
            assert not phantom.masks[mask].any()


def test_chest_findings_lie_in_the_reported_lung_with_matching_size_words() -> None:
    label = chest2d.SIDE_LABEL
    areas: dict[str, dict[str, list[float]]] = {"nodule": {}, "effusion": {}}
    for case in chest_cases(60, 3, size=128, prevalence=ALL_FINDINGS):
        phantom = chest2d.render(case)
        (present, absent), anatomy = claims(case), phantom.masks["anatomy"]
        (nodule_side, nodule_size), (fluid_side, fluid_size) = (
            present["nodule"],
            present["effusion"],
        )
        assert not absent & {"nodule", "effusion"}
        assert (phantom.row["nodule_side"], phantom.row["effusion_side"]) == (
            nodule_side,
            fluid_side,
        )
        nodule = phantom.masks["nodule_mask"].astype(bool)
        fluid = phantom.masks["effusion_mask"].astype(bool)
        assert (anatomy[nodule] == label[nodule_side]).all(), phantom.row["report"]
        assert (anatomy[fluid] == label[fluid_side]).all(), phantom.row["report"]
        lung_area = (anatomy == label[fluid_side]).sum() + fluid.sum()
        areas["nodule"].setdefault(nodule_size, []).append(nodule.sum())
        areas["effusion"].setdefault(fluid_size, []).append(fluid.sum() / lung_area)
    for finding, by_word in areas.items():
        assert max(by_word["small"]) < min(by_word["large"]), finding


def test_report_sentences_state_their_claims_in_words_and_negate_only_absent_findings() -> None:
    sizes = {name: {w: c for c, ws in words.items() for w in ws}
             for name, words in reports.SIZE_WORDS.items()}  # fmt: skip
    for phrasing in reports.PHRASINGS:
        for case in chest_cases(80, 5, prevalence={"nodule": 0.5, "effusion": 0.5},
                                report_phrasing=phrasing):  # fmt: skip
            for sentence in chest2d.report_sentences(case):
                text = sentence.text.lower()
                if sentence.present:
                    name, side, size = sentence.present
                    other = "left" if side == "right" else "right"
                    assert side in text and other not in text, text
                    words = [w for w in sizes[name] if re.search(rf"\b{w}\b", text)]
                    mm = re.search(r"(\d+) mm", text)
                    said = sizes[name][max(words, key=len)] if words else None
                    if mm:
                        lo, hi = reports.NODULE_MM[size]
                        assert lo <= int(mm.group(1)) <= hi, text
                    else:
                        assert said == size, text
                else:
                    assert not re.search(r"\b(left|right)\b", text), text
                for name in sentence.absent:
                    assert getattr(case, name, None) is None, (name, text)


def test_heldout_phrasings_are_new_sentences_over_the_training_words() -> None:
    def reports_of(phrasing: str) -> list[str]:
        cases = chest_cases(300, 6, prevalence={"nodule": 0.5, "effusion": 0.5},
                            report_phrasing=phrasing)  # fmt: skip
        return [chest2d.render(c).row["report"] for c in cases]

    def sentences(texts: list[str]) -> set[str]:
        out = set()
        for t in texts:  # numbers (age, mm) and sizes aside: the wording itself
            for s in re.split(r"(?<=\.) ", t):
                out.add(re.sub(r"\d+", "#", s.lower()))
        return out

    train, heldout = reports_of("train"), reports_of("heldout")
    assert not sentences(train) & sentences(heldout)
    vocabulary = {w for t in train for w in re.findall(r"[a-z]+", t.lower())}
    new = {w for t in heldout for w in re.findall(r"[a-z]+", t.lower())} - vocabulary
    assert not new, new  # a tokenizer fitted on train reports knows every word


def test_no_heldout_structure_is_a_training_one_for_another_finding() -> None:
    """Held-out wording is new sentence structure, not a training sentence with another finding
    named: every template, its finding names abstracted (sides and sizes are slots already), is
    in one phrasing only."""
    finding = r"pulmonary nodule|pleural effusion|nodules?|effusion|pneumothorax|\{[abc]\}"

    def structures(phrasing: str) -> set[str]:
        families = [*(f[phrasing] for f in reports.FINDING.values()),
                    reports.NEGATION[phrasing], reports.NORMAL[phrasing],
                    reports.DISTRACTOR[phrasing], (reports.DEMOGRAPHIC[phrasing],)]  # fmt: skip
        return {re.sub(finding, "F", t) for family in families for t in family}

    train, heldout = structures("train"), structures("heldout")
    assert not train & heldout, train & heldout


def test_the_phrasing_never_changes_an_image() -> None:
    for a, b in zip(chest_cases(10, 7), chest_cases(10, 7, report_phrasing="heldout"),
                    strict=True):  # fmt: skip
        pa, pb = chest2d.render(a), chest2d.render(b)
        np.testing.assert_array_equal(pa.image, pb.image)
        assert pa.row["report"] != pb.row["report"]


def test_heart_and_left_lung_are_on_the_image_right() -> None:
    anatomy = chest_samples(1, 4)[0].masks["anatomy"]
    columns = np.arange(anatomy.shape[1])[None, :].repeat(anatomy.shape[0], 0)
    right_lung, left_lung = columns[anatomy == 1].mean(), columns[anatomy == 2].mean()
    assert right_lung < anatomy.shape[1] / 2 < left_lung
    assert columns[anatomy == 3].mean() > anatomy.shape[1] / 2


def body_width(image: np.ndarray) -> int:
    """Widest extent of above-background pixels over the middle rows (markers sit in corners)."""
    n = image.shape[0]
    widest = 0
    for row in image[n // 4 : 3 * n // 4]:
        above = np.flatnonzero(row > 0.2)
        if above.size:
            widest = max(widest, int(above[-1] - above[0] + 1))
    return widest


def test_body_width_depends_on_sex() -> None:
    widths: dict[str, list[int]] = {"F": [], "M": []}
    for phantom in chest_samples(200, 5):
        widths[phantom.row["sex"]].append(body_width(phantom.image))
    female, male = np.array(widths["F"]), np.array(widths["M"])
    assert len(female) > 50 and len(male) > 50
    assert male.min() > female.max()
    pooled_se = np.sqrt(female.var(ddof=1) / len(female) + male.var(ddof=1) / len(male))
    assert (male.mean() - female.mean()) / pooled_se > 10


def test_age_strengthens_lung_texture_and_fades_ribs() -> None:
    ages, texture, ribs = [], [], []
    for phantom in chest_samples(150, 6, prevalence=NO_FINDINGS):
        anatomy, clean = phantom.masks["anatomy"], phantom.clean
        lungs = (anatomy == 1) | (anatomy == 2)
        pairs = lungs[:, 1:] & lungs[:, :-1]
        texture.append(np.abs(np.diff(clean, axis=1))[pairs].mean())
        right = anatomy == 1
        row_means = [clean[r][right[r]].mean() for r in range(len(clean)) if right[r].sum() >= 4]
        ribs.append(np.std(np.diff(row_means)))
        ages.append(phantom.row["age"])
    assert np.corrcoef(ages, texture)[0, 1] > 0.6
    assert np.corrcoef(ages, ribs)[0, 1] < -0.25


def test_shortcut_ties_site_b_to_nodules() -> None:
    rows = [p.row for p in chest_samples(2000, 7, size=32, shortcut=0.9)]
    for positive, p_b in [(1, 0.9), (0, 0.1)]:
        group = [r["site"] for r in rows if r["nodule"] == positive]
        assert within_sds(group.count("B"), len(group), p_b), (positive, group.count("B"))
        others = [s for s in group if s != "B"]
        assert within_sds(others.count("A"), len(others), 0.5)


def test_without_shortcut_sites_are_uniform() -> None:
    sites = [p.row["site"] for p in chest_samples(1500, 8, size=32)]
    for site in "ABC":
        assert within_sds(sites.count(site), len(sites), 1 / 3), site


def test_hidden_stratum_fraction_and_lower_contrast() -> None:
    cases = chest_cases(600, 9, size=64, hidden_stratum=0.4)
    subtypes = [c.nodule.subtype if c.nodule else "none" for c in cases]
    positives = [c for c in cases if c.nodule]
    assert all((s == "none") == (c.nodule is None) for s, c in zip(subtypes, cases, strict=True))
    assert within_sds(subtypes.count("subtle"), len(positives), 0.4)
    contrast: dict[str, list[float]] = {"subtle": [], "typical": []}
    for case in positives:
        phantom = chest2d.render(case)
        assert phantom.row["nodule_subtype"] == case.nodule.subtype
        without = chest2d.render(dataclasses.replace(case, nodule=None))
        inside = phantom.masks["nodule_mask"].astype(bool)
        contrast[case.nodule.subtype].append((phantom.clean - without.clean)[inside].mean())
    assert max(contrast["subtle"]) < min(contrast["typical"])


def test_site_markers_are_per_site_and_outside_the_body() -> None:
    for size in (32, 128):
        markers: dict[str, np.ndarray] = {}
        for phantom in chest_samples(30, 10, size=size):
            marker = phantom.clean == 1.0
            site = phantom.row["site"]
            np.testing.assert_array_equal(markers.setdefault(site, marker), marker)
            padded = np.pad(marker, 1)
            around = np.zeros_like(marker)
            for axis in (0, 1):
                for shift in (-1, 1):
                    around |= np.roll(padded, shift, axis)[1:-1, 1:-1]
            assert (phantom.clean[around & ~marker] == 0.0).all(), (size, site)
            assert not (phantom.masks["anatomy"][marker]).any()
        assert len(markers) == 3
        patterns = [m.tobytes() for m in markers.values()]
        assert len(set(patterns)) == 3


def test_site_noise_levels_differ() -> None:
    noise: dict[str, list[float]] = {"A": [], "B": [], "C": []}
    for phantom in chest_samples(60, 11):
        body = (phantom.clean > 0.05) & (phantom.clean < 0.95)
        noise[phantom.row["site"]].append(np.std((phantom.image - phantom.clean)[body]))
    assert np.mean(noise["A"]) < np.mean(noise["B"]) < np.mean(noise["C"])


@pytest.mark.parametrize("size", [32, 64, 128, 512])
def test_chest_anatomy_scales_with_size(size: int) -> None:
    def fractions(phantom) -> np.ndarray:
        anatomy = phantom.masks["anatomy"]
        return np.array([(anatomy == label).mean() for label in (1, 2, 3)])

    def make(n: int):
        options = chest2d.ChestOptions(size=n, prevalence=ALL_FINDINGS)
        return chest2d.sample(np.random.default_rng([12, 0]), options)

    reference, phantom = make(512), make(size)
    assert phantom.image.shape == phantom.clean.shape == (size, size)
    assert phantom.image.dtype == phantom.clean.dtype == np.float32
    assert phantom.image.min() >= 0.0 and phantom.image.max() <= 1.0
    np.testing.assert_allclose(fractions(phantom), fractions(reference), rtol=0.1)
    assert phantom.masks["nodule_mask"].any() and phantom.masks["effusion_mask"].any()
    assert all(m.dtype == np.uint8 and m.shape == (size, size) for m in phantom.masks.values())


def test_ventricle_volume_is_measured_and_tracks_age() -> None:
    samples = brain_samples(200, 13)
    ages = [p.row["age"] for p in samples]
    volumes = [p.row["ventricle_volume"] for p in samples]
    for phantom in samples[:20]:
        measured = np.count_nonzero(phantom.masks["anatomy"] == 2) * brain3d.VOXEL_VOLUME_MM3
        assert phantom.row["ventricle_volume"] == measured
    assert np.corrcoef(ages, volumes)[0, 1] > 0.8


@pytest.mark.parametrize("size", [16, 32])
def test_brain_lesion_mask_is_exactly_where_the_image_changed(size: int) -> None:
    options = brain3d.BrainOptions(size=size, prevalence={"lesion": 1.0})
    for i in range(25):
        case = brain3d.draw_case(np.random.default_rng([14, i]), options)
        phantom = brain3d.render(case)
        without = brain3d.render(dataclasses.replace(case, lesion=None))
        lesion = phantom.masks["lesion_mask"].astype(bool)
        assert lesion.any()
        np.testing.assert_array_equal(phantom.clean != without.clean, lesion)
        assert (phantom.masks["anatomy"][lesion] == 1).all()
        side = reported_side(phantom.row["report"], r"lesion in the (left|right) hemisphere")
        ijk = np.argwhere(lesion)
        x = (np.c_[ijk, np.ones(len(ijk))] @ brain3d.affine(size).T)[:, 0]
        assert (x > 0).all() if side == "right" else (x < 0).all(), (side, x)
    for phantom in brain_samples(10, 15, size=size, prevalence={"lesion": 0.0}):
        assert not phantom.masks["lesion_mask"].any()
        assert phantom.row["report"].endswith("No lesion.")


def test_brain_affine_centres_the_volume_at_one_mm() -> None:
    for size in (16, 31, 32):
        matrix = brain3d.affine(size)
        assert matrix.dtype == np.float64 and matrix.shape == (4, 4)
        np.testing.assert_allclose(matrix[:3, :3], np.eye(3))
        centre = matrix @ np.array([(size - 1) / 2.0] * 3 + [1.0])
        np.testing.assert_allclose(centre[:3], 0.0)


def test_brain_tissue_contrast_is_t1_like() -> None:
    phantom = brain_samples(1, 16, size=64)[0]
    anatomy, clean = phantom.masks["anatomy"], phantom.clean
    csf, parenchyma = np.median(clean[anatomy == 2]), np.median(clean[anatomy == 1])
    line = clean[:, 32, 32]
    outside_brain = line[: np.argmax(anatomy[:, 32, 32] > 0)]
    scalp, skull = outside_brain.max(), outside_brain[outside_brain > 0].min()
    assert skull < csf < parenchyma < scalp


def test_same_seed_same_case_and_different_seed_differs() -> None:
    generators = [
        (chest2d.sample, chest2d.ChestOptions(size=32, shortcut=0.7, hidden_stratum=0.5)),
        (brain3d.sample, brain3d.BrainOptions(size=16)),
    ]
    for sample, options in generators:
        first = sample(np.random.default_rng([17, 3]), options)
        again = sample(np.random.default_rng([17, 3]), options)
        other = sample(np.random.default_rng([17, 4]), options)
        np.testing.assert_array_equal(first.image, again.image)
        np.testing.assert_array_equal(first.clean, again.clean)
        assert first.row == again.row
        assert first.masks.keys() == again.masks.keys()
        for key in first.masks:
            np.testing.assert_array_equal(first.masks[key], again.masks[key])
        assert not np.array_equal(first.image, other.image)


def check_row_against_schema(row: dict, masks: dict, columns: dict) -> None:
    assert set(row) | set(masks) | {"id", "image", "split"} == set(columns)
    assert columns["id"] == {"role": "id"} and columns["image"] == {"role": "image"}
    assert columns["split"] == {"role": "split", "levels": ["train", "val", "test"]}
    for key, mask in masks.items():
        assert columns[key]["role"] == "mask"
        assert set(np.unique(mask)) <= {0, *columns[key]["labels"]}, key
    for key, value in row.items():
        column = columns[key]
        if column.get("optional") and value == "":
            continue
        if "levels" in column:
            assert value in column["levels"], (key, value)
        if "range" in column:
            low, high = column["range"]
            assert low <= value <= high, (key, value, column["range"])
        if column["role"] == "text":
            assert isinstance(value, str) and value


def test_chest_rows_satisfy_their_schema() -> None:
    options = chest2d.ChestOptions(size=32, hidden_stratum=0.5)
    columns = chest2d.schema_columns(options)
    assert columns["nodule_subtype"]["role"] == "ignore"
    assert set(columns["nodule_subtype"]) <= {"role", "description"}
    for phantom in chest_samples(100, 18, size=32, hidden_stratum=0.5):
        assert isinstance(phantom.row["age"], int)
        assert phantom.row["nodule_subtype"] in chest2d.SUBTYPES
        check_row_against_schema(phantom.row, phantom.masks, columns)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_brain_rows_satisfy_their_schema(size: int) -> None:
    columns = brain3d.schema_columns(brain3d.BrainOptions(size=size))
    low, high = columns["ventricle_volume"]["range"]
    volumes = []
    for phantom in brain_samples(100 if size < 64 else 40, 19, size=size):
        check_row_against_schema(phantom.row, phantom.masks, columns)
        volumes.append(phantom.row["ventricle_volume"])
    assert low <= min(volumes) and max(volumes) <= high
    assert high < 2.0 * max(volumes), "range should be tight enough to normalise with"


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: chest2d.ChestOptions(size=16), "size"),
        (lambda: chest2d.ChestOptions(size=1024), "size"),
        (lambda: chest2d.ChestOptions(size=64.0), "size"),
        (lambda: chest2d.ChestOptions(shortcut=1.5), "shortcut"),
        (lambda: chest2d.ChestOptions(hidden_stratum=-0.1), "hidden_stratum"),
        (lambda: chest2d.ChestOptions(min_nodule_px=3.0), "min_nodule_px"),
        (lambda: chest2d.ChestOptions(prevalence={"tumour": 0.1}), "prevalence"),
        (lambda: chest2d.ChestOptions(prevalence={"nodule": 2.0}), "prevalence"),
        (lambda: brain3d.BrainOptions(size=8), "size"),
        (lambda: brain3d.BrainOptions(size=300), "size"),
        (lambda: brain3d.BrainOptions(prevalence={"nodule": 0.3}), "prevalence"),
        (lambda: brain3d.BrainOptions(prevalence={"lesion": float("nan")}), "prevalence"),
    ],
)
def test_invalid_options_name_the_option(make, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make()


def test_rules_document_the_numbers() -> None:
    for text, numbers in [
        (chest2d.RULES, ["0.74", "0.86", "radiological", "gamma", "hidden_stratum"]),
        (brain3d.RULES, ["ras+", "bias field", "ventricle_volume", "1 mm"]),
    ]:
        for needle in numbers:
            assert needle in text.lower()


def test_min_nodule_px_sets_the_smallest_radius_at_any_size() -> None:
    """At 32 px, min_nodule_px 1.5 makes every nodule at least 1.5 px in radius (area >= 7 px),
    and every one of 300 forced nodules still finds a place in its lung. A 1.5 px disk covers
    at least the 4 pixel centres within 0.71 px of a pixel corner."""
    cases = chest_cases(300, 21, size=32, min_nodule_px=1.5, prevalence={"nodule": 1.0})
    radii_px = [c.nodule.radius * 16 for c in cases]
    assert min(radii_px) >= 1.5 - 1e-9
    default = chest_cases(300, 21, size=32, prevalence={"nodule": 1.0})
    assert min(c.nodule.radius * 16 for c in default) < 1.0
    areas = [
        int(p.masks["nodule_mask"].sum())
        for p in chest_samples(50, 22, size=32, min_nodule_px=1.5, prevalence={"nodule": 1.0})
    ]
    assert min(areas) >= 4 and np.mean(areas) >= 6
