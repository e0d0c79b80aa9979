"""The paper's reference command line, mapped onto ours: commands written for google-research/simclr's tf2/run.py
(and the TF1 flags its README pastes with them) run here as they are.

Most of the reference's 48 flags are fields of our Config with the same name and meaning. The others are declared
by run.py from REFERENCE_ONLY and turned into Config values by `translate`, which also reads the reference's
`--mode=train|train_then_eval|eval` + `--train_mode=pretrain|finetune`. What cannot be honoured is refused in one
line naming what to use instead. No TensorFlow, no absl: a dict of flag values in, Config values out.
"""

from typing import Dict, List, Tuple

from simclr_tf.errors import UserError

REFERENCE_MODES = ('train', 'train_then_eval')  # the reference's --mode values we do not share ('eval' we do)

# name: (type or choices, help). Defaults are None: a flag that was not given changes nothing.
REFERENCE_ONLY = {
    'train_mode': (('pretrain', 'finetune'), 'Reference command line: the objective of --mode=train, '
                   'train_then_eval or eval (pretrain or finetune). Ours: --mode=pretrain|finetune.'),
    'use_tpu': (bool, 'Reference command line: run on a TPU (--tpu_name, --master; a Cloud TPU VM\'s own TPU '
                'without them). Ours: --tpu=NAME.'),
    'tpu_name': (str, 'Reference command line: the TPU\'s name. Ours: --tpu.'),
    'master': (str, 'Reference command line: the TPU\'s grpc:// address. Ours: --tpu.'),
    'keep_hub_module_max': (int, 'Reference command line: SavedModels kept per run, as versions '
                            'model_dir/saved_model/<step>/. Ours: --keep_export_versions.'),
    'proj_head_mode': (('none', 'linear', 'nonlinear'), 'Reference command line: no projection head, one linear '
                       'layer, or --num_proj_layers layers. Ours: --num_proj_layers=0, 1 or more.'),
    'variable_schema': (str, 'Flag of the reference\'s TF1 code that its README pastes: which variables fine-tuning '
                        'restores. simclr-tf restores the encoder and the projection head up to '
                        '--ft_proj_selector, never the optimizer state or the supervised head: what the published '
                        'schemas select. Accepted and not needed.'),
    'train_summary_steps': (int, 'Flag of the reference\'s TF1 code that its README pastes: summaries every N '
                            'steps (0: the default). Ours: --log_every_steps.'),
}


def translate(values: Dict[str, object], given: set) -> Tuple[Dict[str, object], List[str]]:
  """(Config values, notes): `values` are every flag's value (ours and REFERENCE_ONLY's), `given` the names of the
  flags on the command line. Returns the Config fields the reference flags change, and one note per translation
  for the log. A combination that cannot be honoured raises UserError."""
  changes, notes = {}, []

  def set_value(name, value, why):
    changes[name] = value
    notes.append(f'{why} -> --{name}={value}')

  mode = values['mode']
  train_mode = values.get('train_mode')
  if train_mode and 'mode' not in given:
    mode = 'train'  # the reference's default
  if mode in REFERENCE_MODES:
    objective = train_mode or 'pretrain'
    set_value('mode', objective, f'--mode={mode} --train_mode={objective}')
    if mode == 'train':
      if values.get('eval_split'):
        set_value('eval_split', '', f'--mode=train evaluates nothing, as in the reference (--mode=train_then_eval '
                                    f'evaluates --eval_split={values["eval_split"]} at the end)')
    elif not values.get('eval_split'):
      set_value('eval_split', 'validation', '--mode=train_then_eval (the reference\'s --eval_split default)')
  elif mode == 'eval':
    if not values.get('checkpoint') and values.get('model_dir'):
      set_value('checkpoint', values['model_dir'], '--mode=eval of the reference (it evaluates model_dir)')
  elif train_mode and mode != train_mode:
    raise UserError(f'--train_mode={train_mode} contradicts --mode={mode}; simclr-tf\'s --mode={train_mode} alone '
                    f'says it.')

  use_tpu = values.get('use_tpu')
  address = values.get('master') or values.get('tpu_name')
  if use_tpu or (use_tpu is None and address):
    set_value('tpu', address or 'local', '--use_tpu' + (f' at {address}' if address else ''))
    if values.get('strategy') in ('auto', 'tpu'):
      changes['strategy'] = 'tpu'

  keep = values.get('keep_hub_module_max')
  if keep is not None:
    if keep < 1:  # the reference removes nothing then; versions that pile up without end are not kept here
      raise UserError(f'--keep_hub_module_max={keep}: give the number of versions to keep (1 or more).')
    set_value('keep_export_versions', keep, f'--keep_hub_module_max={keep} (its layout: saved_model/<step>/)')

  head = values.get('proj_head_mode')
  if head == 'none':
    if values.get('ft_proj_selector'):
      raise UserError(f'--proj_head_mode=none leaves no projection layer for '
                      f'--ft_proj_selector={values["ft_proj_selector"]}; use --ft_proj_selector=0.')
    set_value('num_proj_layers', 0, '--proj_head_mode=none')
  elif head == 'linear':
    set_value('num_proj_layers', 1, '--proj_head_mode=linear')

  if values.get('variable_schema') is not None:
    notes.append('--variable_schema: fine-tuning restores the encoder and the projection head up to '
                 '--ft_proj_selector, never the optimizer or the supervised head')
  summary_steps = values.get('train_summary_steps')
  if summary_steps:
    set_value('log_every_steps', summary_steps, f'--train_summary_steps={summary_steps}')
  return changes, notes
