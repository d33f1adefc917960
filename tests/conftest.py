import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # Test models are tiny and gain nothing from threads, and on a busy shared CPU OpenMP
    # spin-waiting made them about 100x slower with 2 threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
