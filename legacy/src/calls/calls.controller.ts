// REST surface of calls: start, look up, join, leave, end. Every route needs a Bearer token and
// membership of the call's chat.
import { Body, Controller, Get, HttpCode, Param, ParseUUIDPipe, Post, Query, UseGuards } from '@nestjs/common';
import { IsUUID } from 'class-validator';
import { AuthGuard, AuthUser, CurrentUser } from '../auth/auth.guard';
import { CallsService, callView } from './calls.service';

export class StartCallDto {
  @IsUUID()
  chatId: string;
}

export class ActiveCallQuery {
  @IsUUID()
  chatId: string;
}

const uuid = new ParseUUIDPipe();

@Controller('calls')
@UseGuards(AuthGuard)
export class CallsController {
  constructor(private readonly calls: CallsService) {}

  /** 201: a new active call with the caller in it; 409 with `callId` when the chat already has one. */
  @Post()
  async start(@CurrentUser() me: AuthUser, @Body() dto: StartCallDto) {
    return callView(await this.calls.start(dto.chatId, me.id));
  }

  /** The chat's active call, or 404. */
  @Get()
  async active(@CurrentUser() me: AuthUser, @Query() q: ActiveCallQuery) {
    return callView(await this.calls.activeInChat(q.chatId, me.id));
  }

  @Get(':id')
  async get(@CurrentUser() me: AuthUser, @Param('id', uuid) id: string) {
    return callView(await this.calls.get(id, me.id));
  }

  @Post(':id/join')
  @HttpCode(200)
  async join(@CurrentUser() me: AuthUser, @Param('id', uuid) id: string) {
    return callView(await this.calls.join(id, me.id));
  }

  @Post(':id/leave')
  @HttpCode(200)
  async leave(@CurrentUser() me: AuthUser, @Param('id', uuid) id: string) {
    return callView(await this.calls.leave(id, me.id));
  }

  @Post(':id/end')
  @HttpCode(200)
  async end(@CurrentUser() me: AuthUser, @Param('id', uuid) id: string) {
    return callView(await this.calls.end(id, me.id));
  }
}
