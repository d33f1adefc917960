from dia.progress import expected_steps


def test_a_time_limit_sets_the_steps_a_progress_bar_expects():
    assert expected_steps(10, 20.0, None, 900) == 900  # no limit: every step
    assert expected_steps(10, 20.0, 100.0, 900) == 50  # 2 s a step, 80 s left: 40 more
    assert expected_steps(10, 20.0, 101.0, 900) == 51  # a step begun before the limit ends
    assert expected_steps(10, 20.0, 1e6, 900) == 900  # the steps run out before the time
    assert expected_steps(10, 20.0, 15.0, 900) == 10  # past the limit: no step more
    assert expected_steps(0, 0.0, 100.0, 900) == 900  # no pace yet
