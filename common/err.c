/* err — see err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

static const struct {
	int code;
	const char *name;
	const char *text;
} fl_errs[] = {
    {FL_OK, "FL_OK", "success"},
    {FL_ENOMEM, "FL_ENOMEM", "out of memory or over budget"},
    {FL_EINVAL, "FL_EINVAL", "invalid argument"},
    {FL_EIO, "FL_EIO", "input/output error"},
    {FL_ENOENT, "FL_ENOENT", "not found"},
    {FL_ETOOBIG, "FL_ETOOBIG", "size over limit"},
    {FL_EPROTO, "FL_EPROTO", "protocol error or malformed message"},
    {FL_EFORMAT, "FL_EFORMAT", "malformed or corrupt file"},
    {FL_ECRYPTO, "FL_ECRYPTO", "TLS or cryptographic failure"},
    {FL_EAUTH, "FL_EAUTH", "authentication refused"},
    {FL_ETIMEDOUT, "FL_ETIMEDOUT", "timed out"},
    {FL_ECLOSED, "FL_ECLOSED", "closed"},
    {FL_EAGAIN, "FL_EAGAIN", "try again"},
    {FL_ECONFIG, "FL_ECONFIG", "configuration error"},
    {FL_EUNSUPPORTED, "FL_EUNSUPPORTED", "not supported"},
    {FL_EOVERFLOW, "FL_EOVERFLOW", "size arithmetic overflow"},
    {FL_EMISMATCH, "FL_EMISMATCH", "mismatch"},
    {FL_ENUMERIC, "FL_ENUMERIC", "non-finite or invalid number"},
    {FL_ESTATE, "FL_ESTATE", "invalid state for this operation"},
    {FL_EINTR, "FL_EINTR", "interrupted"},
    {FL_EBUSY, "FL_EBUSY", "resource busy"},
    {FL_ENET, "FL_ENET", "network error"},
};

const char *fl_strerror(int err)
{
	for (unsigned i = 0; i < sizeof(fl_errs) / sizeof(fl_errs[0]); i++)
		if (fl_errs[i].code == err)
			return fl_errs[i].text;
	return "unknown error";
}

const char *fl_errname(int err)
{
	for (unsigned i = 0; i < sizeof(fl_errs) / sizeof(fl_errs[0]); i++)
		if (fl_errs[i].code == err)
			return fl_errs[i].name;
	return "FL_E?";
}

int fl_vfail(char *why, size_t whylen, int rc, const char *fmt, va_list ap)
{
	if (why && whylen)
		vsnprintf(why, whylen, fmt, ap);
	return rc;
}

int fl_fail(char *why, size_t whylen, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fl_vfail(why, whylen, rc, fmt, ap);
	va_end(ap);
	return rc;
}
