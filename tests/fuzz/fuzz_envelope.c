/* Fuzz target: Envelope decoding (wire_decode) and re-encoding of whatever
 * decodes. A decoded message must re-encode and decode again. */
#include <stdint.h>
#include <stdlib.h>

#include "err.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	wire_msg *m = NULL;
	if (wire_decode(data, size, 1 << 20, 0, &m) != 0)
		return 0;
	buf b;
	buf_init(&b, 4u << 20);
	if (wire_encode(wire_env(m), 0, &b) == 0) {
		wire_msg *m2 = NULL;
		if (wire_decode(b.data, b.len, 4u << 20, 0, &m2) != 0)
			abort(); /* our own encoding must decode */
		if (wire_env(m2)->body_case != wire_env(m)->body_case)
			abort();
		wire_free(m2);
	}
	buf_fini(&b);
	wire_free(m);
	return 0;
}
