/* cmd_export — `fedlora-node export`: an adapter as a llama.cpp GGUF LoRA
 * adapter or a PEFT directory, or the merged model as GGUF (F32/F16/Q8_0/
 * Q4_0, round-to-nearest or GPTQ on local calibration text). See
 * docs/EXPORT.md. */
#ifndef FL_CMD_EXPORT_H
#define FL_CMD_EXPORT_H

int cmd_export(int argc, char **argv);

#endif
