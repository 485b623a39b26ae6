"""AWS error classification and messages (aws/errors.py)."""

from __future__ import annotations

from botocore.exceptions import ClientError

from devicedefender_audit.aws.errors import aws_error_code, aws_error_message

MOTO_500 = ("<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server "
            "Error</h1>\n<p>The server encountered an internal error and was unable to complete your request.</p>\n")


def client_error(code: str, message: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "ListCACertificates")


def test_a_web_page_instead_of_an_aws_error_is_one_line():
    """moto's server answers an operation it lacks with Flask's HTML 500 page: the report said
    so in the whole page, twice. One line, with the page's title, says it."""
    exc = client_error("500", MOTO_500, 500)
    message = aws_error_message(exc)
    assert message == "HTTP 500 answered with a web page, not an AWS error: 500 Internal Server Error"
    assert aws_error_code(exc) == "500"
    untitled = aws_error_message(client_error("502", "<html><body>Bad   gateway\n</body></html>", 502))
    assert untitled == "HTTP 502 answered with a web page, not an AWS error: <html><body>Bad gateway </body></html>"


def test_an_aws_error_message_is_kept_as_it_is():
    assert aws_error_message(client_error("ResourceNotFoundException", "No CA <abc> found", 404)) == "No CA <abc> found"
