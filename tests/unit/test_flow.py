"""Credit accounting: windows bound what a sender may have in flight."""

from umbranet.proto.flow import MAX_WINDOW, ReceiveWindow, RelayAccount, SendCredit


def test_receive_window_refuses_overrun_and_returns_credit_in_batches() -> None:
    window = ReceiveWindow(1000)
    assert window.receive(600)
    assert not window.receive(401)
    assert window.consume(100) == 0  # under a quarter window: keep batching
    assert window.consume(200) == 300
    assert window.receive(700)


def test_send_credit_cannot_exceed_largest_window() -> None:
    credit = SendCredit(10)
    credit.consume(10)
    assert credit.available == 0
    assert credit.grant(5)
    assert not credit.grant(MAX_WINDOW)
    assert not credit.grant(0)


def test_relay_account_detects_window_violations_and_bogus_credit() -> None:
    account = RelayAccount(100)
    assert account.forward(100)
    assert not account.credit(101)
    assert account.credit(100)
    assert not account.forward(101)
